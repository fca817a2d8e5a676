"""The factory's Redis state: key and field names, the Lua scripts, the execution lifecycle, RQ's view.

Every module that writes a job's state in Redis lives here, and nothing outside imports ``rq``.
"""
