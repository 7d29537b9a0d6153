"""Children of ``process/start``: spawn, output log, watchers, and the process that ties them together."""
