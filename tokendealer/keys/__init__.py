"""The signing keys: the key set, where it is kept, the running key ring, and signing.

``keyset`` is the model (keys, their ``next``/``current``/``retired`` states,
rotation); ``file_store`` keeps a key set in the keys directory; ``ring`` is
the key set a running worker signs with, reloaded when it changes;
``signing`` makes and reads RFC 9068 access tokens. Nothing here imports the
HTTP app or the processes.
"""
