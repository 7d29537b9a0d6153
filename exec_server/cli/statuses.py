"""The exit statuses of ``exec-server run`` and ``cp``, and the help text that lists them.

A command that could not be started ends as ``sh``, ``ssh`` and ``docker
run`` end then: 127 when the command was not found, 126 when it is not
executable, 125 when the server could not start it otherwise (a missing
working directory: ``docker run``'s status for its own failures).
"""

EXIT_USAGE = 2  #: Exit status of a usage mistake (argparse's own).
#: Exit status of ``run`` and ``cp`` with several hosts when at least one host failed (as GNU xargs' 123).
EXIT_SOME_HOSTS_FAILED = 123
EXIT_RUN_FAILED = 125  #: Exit status of ``run`` when the server could not start the command (not 126, 127).
EXIT_NOT_EXECUTABLE = 126  #: Exit status of ``run`` when the command is not executable (EACCES, ENOEXEC).
EXIT_NOT_FOUND = 127  #: Exit status of ``run`` when the command was not found.
EXIT_DISCONNECTED = 255  #: Exit status of ``run`` when the connection to the server was lost.


def start_failure_status(error: BaseException) -> int:
    """The exit status of a start the server refused with ``error`` (an RpcError, typed by the client:
    ``ProgramNotFound``, ``WorkingDirectoryNotFound``): 127, 126 or 125."""
    from exec_server.client.start_errors import ProgramNotFound, not_executable

    if isinstance(error, ProgramNotFound):
        return EXIT_NOT_FOUND
    return EXIT_NOT_EXECUTABLE if not_executable(error) else EXIT_RUN_FAILED


RUN_EXIT_STATUSES = """exit status:
  N    the remote command's own exit status (128+N when it died of signal N; 1 under --tty)
  1    also: local stdout or stderr could not be written (closed, full): remote tree killed
  2    a usage mistake: a bad option, server URL or token file
  123  with several hosts (--url repeated, or --hosts): at least one host failed (a non-zero
       exit, could not start the command, could not connect or lost its connection); the
       summary on stderr gives each host's status (255: connection, 125-127: start)
  125  the server could not start the command (e.g. its working directory not found)
  126  the command is not executable (permission denied, not a program the system can run)
  127  command not found
  130  interrupted (Ctrl-C) before the command started (after: its own status; several hosts: 130 if
       any failed); ended by SIGINT, a script stops too; 128+N: SIGTERM, SIGHUP (a start is terminated)
  141  local stdout or stderr was a closed pipe (run ... | head -1): the remote tree was killed
  255  the connection failed, was refused (e.g. a missing or invalid token) or was lost
       before the command's exit status arrived; or the server failed the command (no answer to
       the start, output lost, no exit status, no end within 10 s of a kill): one line says which"""

CP_SEVERAL_HOSTS = """several hosts (--url repeated, or --hosts): ':PATH' means that path on every host;
  an upload goes to each, a download goes to DEST/HOST/NAME (HOST is host_port, DEST a directory).
exit status: 0 done, 1 failed (one host; the message names the path), 2 a usage mistake, 123 at least one of
  several hosts failed, 130 interrupted (Ctrl-C; 128+N: SIGTERM, SIGHUP), 255 could not connect or lost it"""
