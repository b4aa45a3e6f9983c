"""Processes: ``tokendealer serve`` under hypercorn, with our own worker supervisor.

``server`` prepares the database and the key set once and configures
hypercorn; ``supervisor`` binds the sockets, runs the workers and drains them
on SIGTERM.
"""
