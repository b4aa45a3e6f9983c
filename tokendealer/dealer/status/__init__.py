"""Token Status Lists (draft-ietf-oauth-status-list): the dealer's side.

* ``allocator`` - which index each new token gets (blocks per client, from memory)
* ``lists``     - the worker's copy of the revoked bits and the Status List Tokens
* ``endpoint``  - ``GET /statuslists/<n>`` and the aggregation ``GET /statuslists``
* ``revoked``   - the exact answer from the database, for introspection and ``/admin``

The tables and the statements behind them are in :mod:`tokendealer.store.status_lists`.
"""
