"""The mount point files of a server killed with SIGKILL are removed by a later server (fs/mount_records.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import Peer, all_gone, reap, start_params, wait_until
from exec_server.server.fs.mount_points import MountPoints
from exec_server.server.fs.mount_records import MountRecords, folder_name
from test_sandbox import entry, needs_bwrap, restricted

pytestmark = [pytest.mark.posix, pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX records")]

HOLDER = """
import sys, time
from exec_server.server.fs.mount_points import MountPoints
from exec_server.server.fs.mount_records import MountRecords, folder_name
points = MountPoints(MountRecords(sys.argv[1]))
points.acquire(sys.argv[2:])
print("ready", flush=True)
time.sleep(120)
"""


def records(folder) -> dict:
    """Every record in ``folder``: file name -> its JSON."""
    return {name: json.loads((folder / name).read_bytes()) for name in os.listdir(str(folder))
            if name.endswith(".json")}


def test_a_record_lists_the_files_made_and_goes_with_the_last(tmp_path):
    folder = tmp_path / "records"
    points = MountPoints(MountRecords(str(folder)))
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    points.acquire([first, second])
    (only,) = records(folder).values()
    assert sorted(only) == [first, second]
    info = os.lstat(first)
    assert only[first] == [info.st_dev, info.st_ino, info.st_ctime_ns] and oct(info.st_mode & 0o777) == "0o444"
    points.release([first])
    assert list(records(folder).values()) == [{second: only[second]}]
    points.release([second])
    assert records(folder) == {} and os.listdir(str(tmp_path)) == ["records"]  # nothing left


def test_a_killed_servers_files_are_removed_by_the_next_sweep_and_a_live_ones_are_not(tmp_path):
    folder = tmp_path / "records"
    made = [str(tmp_path / name) for name in ("stale", "written", "replaced")]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)] + made, stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline() == b"ready\n"
        sweeper = MountRecords(str(folder))
        assert sweeper.sweep() == 0 and all(os.path.exists(path) for path in made)  # its server lives
        os.chmod(made[1], 0o644)
        (tmp_path / "written").write_bytes(b"the user's now")
        os.chmod(made[2], 0o644)  # the user's own empty file in its place: its change time differs
        os.unlink(made[2])
        (tmp_path / "replaced").write_bytes(b"")
        os.chmod(made[2], 0o444)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert len(records(folder)) == 1  # left by the kill
        assert sweeper.sweep() == 1
        assert not os.path.exists(made[0]) and records(folder) == {}
        assert (tmp_path / "written").read_bytes() == b"the user's now" and os.path.exists(made[2])  # not its own
    finally:
        reap(holder)


def test_a_cut_record_goes_without_touching_any_file(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir(mode=0o700)
    (folder / "1-00.json").write_bytes(b'{"%s": [1, ' % str(tmp_path / "x").encode())
    (tmp_path / "x").write_bytes(b"")
    assert MountRecords(str(folder)).sweep() == 0
    assert records(folder) == {} and os.path.exists(str(tmp_path / "x"))


@pytest.mark.parametrize("shape", ["others may write it", "a symlink to a folder"])
def test_a_folder_that_is_not_private_keeps_no_records(tmp_path, shape, caplog):
    folder, elsewhere = tmp_path / "records", tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if shape == "others may write it":
        folder.mkdir()
        os.chmod(str(folder), 0o777)
    else:
        folder.symlink_to(elsewhere)
    forged = elsewhere / "1-00.json" if shape != "others may write it" else folder / "1-00.json"
    (tmp_path / "victim").write_bytes(b"")
    os.chmod(str(tmp_path / "victim"), 0o444)
    info = os.lstat(str(tmp_path / "victim"))
    forged.write_text(json.dumps({str(tmp_path / "victim"): [info.st_dev, info.st_ino, info.st_ctime_ns]}))
    points = MountPoints(MountRecords(str(folder)))
    points.sweep()
    points.acquire([str(tmp_path / "made")])
    assert os.path.exists(str(tmp_path / "victim")) and forged.exists()  # never read
    assert sorted(os.listdir(str(folder))) == ["1-00.json"]  # no record of ours either
    assert "not a private folder of this user" in caplog.text
    points.release([str(tmp_path / "made")])
    assert not os.path.exists(str(tmp_path / "made"))  # still removed by the server that made it


def _server(tmpdir):
    return subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TMPDIR": str(tmpdir)})


@needs_bwrap
def test_the_mount_point_files_of_a_sigkilled_server_are_removed_by_the_next(tmp_path):
    """A protected ``.git`` that did not exist: its empty mount point file outlived a SIGKILLed server (and broke
    ``git`` in that folder for good); the next server's first sandboxed start removes it."""
    work, tmpdir = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmpdir.mkdir()
    sandbox = restricted([work], extra=[entry(work / ".git", "read")])
    servers = []
    try:
        first = _server(tmpdir)
        servers.append(first)
        peer = Peer(first.stdout.readline().decode().strip())
        peer.initialize()
        peer.call("process/start", start_params("held", ["sleep", "60"], cwd="file://%s" % work, sandbox=sandbox))
        wait_until(lambda: (work / ".git").exists(), timeout=10)
        tree = psutil.Process(first.pid).children(recursive=True)
        assert tree
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        peer.close()
        wait_until(lambda: all_gone(tree), timeout=10)
        assert os.listdir(str(work)) == [".git"] and (work / ".git").stat().st_size == 0  # left by the kill
        second = _server(tmpdir)
        servers.append(second)
        peer = Peer(second.stdout.readline().decode().strip())
        peer.initialize()
        peer.call("process/start", start_params("next", ["true"], cwd="file://%s" % work,
                                                sandbox=restricted([work])))
        peer.wait_closed("next", timeout=30)
        assert os.listdir(str(work)) == []
        peer.close()
    finally:
        for server in servers:
            reap(server)


@needs_bwrap
@pytest.mark.parametrize("whose", ["its server's", "other servers' (default TMPDIR)"])
def test_a_sandboxed_process_cannot_forge_a_record(tmp_path, whose, monkeypatch):
    """With its temporary folder writable, a sandboxed process sees an empty folder where the records are: a
    record it writes there (naming a file for the next sweep to remove) never reaches the host; nor in the
    folder of that name in /tmp, which servers with the default TMPDIR sweep."""
    from exec_server import Client, make_server
    from exec_server.server.fs import mount_points

    if whose != "its server's":  # this server keeps its records elsewhere (its own TMPDIR)
        folder = MountRecords(os.path.join("/tmp", folder_name())).folder()
        monkeypatch.setattr(mount_points.MOUNT_POINTS, "_records", MountRecords(str(tmp_path / "own")))
    else:
        folder = mount_points.MOUNT_POINTS.records_folders()[0]
    assert folder is not None
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    os.chmod(str(victim), 0o444)
    info = os.lstat(str(victim))
    forged = json.dumps({str(victim): [info.st_dev, info.st_ino, info.st_ctime_ns]})
    server = make_server("ws://127.0.0.1:0").start()
    try:
        with Client.connect(server.url, timeout=10) as client:
            script = "ls -A %s; printf '%%s' '%s' > %s/1-00.json && echo written" % (folder, forged, folder)
            done = client.run(["/bin/sh", "-c", script], sandbox=restricted([os.path.dirname(folder), tmp_path]),
                              timeout=30)
            assert done.stdout == b"written\n", done.stderr
            assert client.run(["true"], sandbox=restricted([tmp_path]), timeout=30).returncode == 0  # a sweep
    finally:
        server.shutdown()
    assert victim.exists() and "1-00.json" not in os.listdir(folder)


@needs_bwrap
def test_a_killed_servers_file_still_mounted_in_a_live_sandbox_stays(tmp_path):
    """A live sandbox (of another server, or an escaped one) binds the killed server's file: removing it would take
    the mount away there (the protected path could then be made); it goes once no namespace mounts it."""
    folder, made = tmp_path / "records", str(tmp_path / ".git")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), made], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    sandbox = None
    try:
        assert holder.stdout.readline() == b"ready\n"
        sandbox = subprocess.Popen(["bwrap", "--unshare-pid", "--die-with-parent", "--bind", "/", "/", "--ro-bind",
                                    "/dev/null", made, "--dev", "/dev", "--proc", "/proc", "--",
                                    "sh", "-c", "echo up; exec sleep 60"],
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert sandbox.stdout.readline() == b"up\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        sweeper = MountRecords(str(folder))
        assert sweeper.sweep() == 0
        assert os.path.exists(made) and len(records(folder)) == 1  # still mounted: file and record kept
        tree = psutil.Process(sandbox.pid).children(recursive=True)
        reap(sandbox)  # its namespace's init dies with it, and the rest with that init
        wait_until(lambda: all_gone(tree), timeout=10)
        assert sweeper.sweep() == 1 and not os.path.exists(made) and records(folder) == {}
    finally:
        reap(holder)
        if sandbox is not None:
            reap(sandbox)


@needs_bwrap
def test_a_file_another_servers_sandbox_mounts_stays_at_release(tmp_path):
    """Another server's sandbox found our file and bound it as an existing path; our release unlinked it, which
    took the mount away in that sandbox (the protected path could then be made).  It stays while mounted, with its
    record, and goes at its next release once no namespace mounts it."""
    folder, made = tmp_path / "records", str(tmp_path / ".git")
    points = MountPoints(MountRecords(str(folder)))
    points.acquire([made])
    sandbox = subprocess.Popen(["bwrap", "--unshare-pid", "--die-with-parent", "--bind", "/", "/", "--ro-bind",
                                "/dev/null", made, "--dev", "/dev", "--proc", "/proc", "--",
                                "sh", "-c", "echo up; exec sleep 60"],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert sandbox.stdout.readline() == b"up\n"
        points.release([made])
        assert os.path.exists(made) and list(records(folder).values())[0].keys() == {made}
        tree = psutil.Process(sandbox.pid).children(recursive=True)
        reap(sandbox)
        wait_until(lambda: all_gone(tree), timeout=10)
        points.acquire([made])  # the kept file serves the next sandbox, and goes with it
        points.release([made])
        assert not os.path.exists(made) and records(folder) == {}
    finally:
        reap(sandbox)


def test_a_sandbox_built_while_a_release_reads_the_mounts_binds_the_file_counted(tmp_path, monkeypatch):
    """release reads /proc outside its lock; a sandbox of this server built then found the file as an existing
    path, bound it uncounted, and the release removed it under that sandbox (the protected path could be made)."""
    import exec_server.server.fs.mount_points as mount_points

    points = MountPoints(MountRecords(str(tmp_path / "records")))
    made = str(tmp_path / ".git")
    points.acquire([made])
    built = []

    def build_then_read(*args):  # another request's sandbox, built while this release reads the mounts
        with points.lock:
            built.append(points.first_missing(made, lambda folder: True))
            if built[-1] is not None:
                points.acquire([built[-1][0]])
        return set()

    monkeypatch.setattr(mount_points, "mount_points_in_use", build_then_read)
    points.release([made])
    assert built == [(made, True)] and os.path.exists(made)  # still ours, counted: the new sandbox binds it
    monkeypatch.setattr(mount_points, "mount_points_in_use", lambda *args: set())
    points.release([made])
    assert not os.path.exists(made)


def test_the_records_folder_reached_through_a_symlink_is_covered_too(tmp_path, monkeypatch):
    """TMPDIR through a symlink (``/home/u/tmp`` -> ``/data/u/tmp``): the profile's folders are resolved, so the
    records folder is too, else a sandbox that may write the real folder is given no tmpfs over it."""
    from exec_server.server.fs import helper, mount_points
    from exec_server.server.fs.sandbox import parse_sandbox

    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    monkeypatch.setattr(mount_points.MOUNT_POINTS, "_records", MountRecords(str(link / "records")))
    policy = parse_sandbox(restricted([real]), process=True)
    command = helper.bubblewrap_command(policy, ["true"], python=False, mount_points=[])
    assert ["--tmpfs", str(real / "records")] == command[command.index("--tmpfs"):][:2]


def test_a_folder_swapped_for_a_symlink_after_the_check_leaves_the_other_folder_alone(tmp_path, monkeypatch):
    """A sandboxed process that may write above a recorded file renames its folder and puts a symlink in its place
    between the sweep's check of the file and its removal: the file of the same name the symlink leads to stays."""
    from exec_server.server.fs import mount_records

    folder, sub, elsewhere = tmp_path / "records", tmp_path / "sub", tmp_path / "elsewhere"
    folder.mkdir(mode=0o700)
    sub.mkdir()
    elsewhere.mkdir()
    made = sub / ".git"
    made.write_bytes(b"")
    os.chmod(str(made), 0o444)
    info = os.lstat(str(made))
    (folder / "1-00.json").write_text(json.dumps({str(made): [info.st_dev, info.st_ino, info.st_ctime_ns]}))
    (elsewhere / ".git").write_text("gitdir: /the/users/worktree\n")
    checked, swapped = os.lstat, []

    def racing_lstat(path, *args, **kwargs):
        result = checked(path, *args, **kwargs)
        if not swapped and (path == str(made) or (path == ".git" and kwargs.get("dir_fd") is not None)):  # once
            swapped.append(True)
            os.rename(str(sub), str(tmp_path / "moved"))
            os.symlink(str(elsewhere), str(sub))
        return result

    monkeypatch.setattr(mount_records.os, "lstat", racing_lstat)
    MountRecords(str(folder)).sweep()
    monkeypatch.undo()
    assert swapped and (elsewhere / ".git").read_text() == "gitdir: /the/users/worktree\n"
    assert not os.path.exists(str(tmp_path / "moved" / ".git"))  # the file made went, where it was checked


def test_a_record_another_user_owns_is_dropped_unread_and_a_stale_staged_one_goes(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    os.chmod(str(victim), 0o444)
    info = os.lstat(str(victim))
    forged = folder / "1-00.json"
    forged.write_text(json.dumps({str(victim): [info.st_dev, info.st_ino, info.st_ctime_ns]}))
    staged, fresh = folder / "2-00.json.new", folder / "3-00.json.new"
    staged.write_bytes(b"")
    fresh.write_bytes(b"")
    os.utime(str(staged), (time.time() - 120, time.time() - 120))
    if os.geteuid() == 0:
        os.chown(str(forged), 65534, 65534)  # not this user's
        assert MountRecords(str(folder)).sweep() == 0
        assert victim.exists() and not forged.exists()
    else:
        assert MountRecords(str(folder)).sweep() == 1  # this user's own: trusted
    assert not staged.exists() and fresh.exists()  # a live server renames its staged record at once
