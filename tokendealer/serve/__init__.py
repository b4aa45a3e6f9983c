"""Processes: ``tokendealer serve`` under hypercorn, with our own worker supervisor.

``startup`` checks and says what is about to run (options, TLS files,
warnings, the summary line); ``server`` prepares the database and the key set
once and configures hypercorn; ``logs`` is how every process logs;
``supervisor`` binds the sockets, runs the workers and drains them on SIGTERM.
"""
