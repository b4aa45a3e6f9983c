"""The dealer's database: engine and migrations, the client registry and its cache, revocations.

``database`` makes the engine and migrates (alembic, ``migrations/``);
``schema`` is the base every table shares; ``registry`` holds the clients,
``client_cache`` a worker's short-lived copy of them, ``revocation_list`` the
revoked ``jti``s. Nothing here imports the HTTP app or the processes.
"""
