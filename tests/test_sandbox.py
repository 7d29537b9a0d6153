"""Sandbox contexts (PROTOCOL.md 9, 10): the fs helper, bubblewrap, escapes."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from exec_server import Client
from exec_server.protocol.errors import InternalError, InvalidParams, InvalidRequest, RpcError
from exec_server.server.fs.helper import FS_HELPER_ENV_ALLOWLIST, run_fs_helper
from exec_server.server.fs.sandbox import parse_sandbox
from conftest import reap, start_params, wait_until

pytestmark = pytest.mark.posix

BWRAP = shutil.which("bwrap")


def bwrap_works() -> bool:
    if not BWRAP:
        return False
    done = subprocess.run([BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--", "true"],
                          capture_output=True, timeout=30)
    return done.returncode == 0


needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="bwrap is not installed or cannot create namespaces here")


def restricted(writable, readable="/", network="restricted", extra=()):
    entries = [{"path": {"type": "path", "path": "file://" + str(readable)}, "access": "read"}]
    entries += [{"path": {"type": "path", "path": "file://" + str(w)}, "access": "write"} for w in writable]
    entries += list(extra)
    return {"permissions": {"type": "managed", "network": network,
                            "file_system": {"type": "restricted", "entries": entries}},
            "windowsSandboxLevel": "disabled"}


@pytest.fixture
def client(server):
    with Client.connect(server.url, timeout=10) as connected:
        yield connected


@pytest.fixture
def roots(tmp_path):
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"original")
    return work, outside


@pytest.mark.parametrize("uri,process_error,fs_error", [
    ("relative", (-32602, "invalid URI: relative URL without a base"), None),
    ("", (-32602, "invalid URI: relative URL without a base"), None),
    ("http://x/", (-32602, "unsupported path URI scheme `http`"), None),
    ("file:///tmp/%00", (-32602, "'file:///tmp/%00' is invalid on 'linux'"), None),
    ("file://host/x", (-32602, "failed to prepare process sandbox: invalid sandbox permission path: "
                               "'file://host/x' is invalid on 'linux'"),
     (-32600, "invalid sandbox permission path URI: 'file://host/x' is invalid on 'linux'")),
])
def test_an_entry_path_that_is_no_file_uri_is_answered(any_server, connect, uri, process_error, fs_error):
    """It reached the sandbox's set-up and failed there: -32603 and a logged traceback."""
    if sys.platform != "linux":
        pytest.skip("the texts name linux")
    peer = connect(any_server.url)
    peer.initialize()
    bad = restricted([], extra=[{"path": {"type": "path", "path": uri}, "access": "read"}])
    reply = peer.request("process/start", start_params("p", ["true"], sandbox=bad))
    assert (reply["error"]["code"], reply["error"]["message"]) == process_error
    reply = peer.request("fs/readFile", {"path": "file:///etc/hostname", "sandbox": bad})
    assert (reply["error"]["code"], reply["error"]["message"]) == (fs_error or process_error)


def test_write_inside_root_and_refusal_outside(client, roots):
    work, outside = roots
    fs = client.fs.with_sandbox(restricted([work]))
    fs.write_file(work / "ok.txt", b"fine")
    assert (work / "ok.txt").read_bytes() == b"fine"
    with pytest.raises(InternalError) as caught:
        fs.write_file(outside / "new.txt", b"x")
    assert caught.value.message == "Read-only file system (os error 30)"
    assert not (outside / "new.txt").exists()
    assert fs.read_file(outside / "secret.txt") == b"original"


def test_none_entry_denies_reading(client, roots):
    work, outside = roots
    deny = [{"path": {"type": "path", "path": "file://" + str(outside)}, "access": "none"}]
    fs = client.fs.with_sandbox(restricted([work], extra=deny))
    with pytest.raises(InvalidRequest) as caught:
        fs.read_file(outside / "secret.txt")
    assert caught.value.message.endswith("(os error 13)")


@needs_bwrap
def test_a_profile_without_the_system_folders_still_runs_the_helper(client, roots):
    """The helper's interpreter needs the loader and the C library, whatever the profile grants."""
    work, outside = roots
    fs = client.fs.with_sandbox(restricted([work], readable=outside))
    assert fs.read_file(outside / "secret.txt") == b"original"
    fs.write_file(work / "w.txt", b"w")
    assert (work / "w.txt").read_bytes() == b"w"
    with pytest.raises(RpcError):  # granted to the helper's loader, not to the request
        fs.read_file("/usr/lib/os-release" if os.path.exists("/usr/lib/os-release") else "/etc/hostname")


def test_symlink_out_of_writable_root(client, roots):
    work, outside = roots
    (work / "escape").symlink_to(outside / "secret.txt")
    (work / "dir-escape").symlink_to(outside)
    fs = client.fs.with_sandbox(restricted([work]))
    with pytest.raises(InternalError):
        fs.write_file(work / "escape", b"pwned")
    with pytest.raises(InternalError):
        fs.write_file(work / "dir-escape" / "new.txt", b"pwned")
    with pytest.raises(InternalError):
        fs.copy(work / "escape", work / "dir-escape" / "copy.txt")
    assert (outside / "secret.txt").read_bytes() == b"original"
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_dot_dot_traversal(client, roots):
    work, outside = roots
    fs = client.fs.with_sandbox(restricted([work]))
    with pytest.raises(InternalError):
        fs.write_file("file://%s/../outside/secret.txt" % work, b"pwned")
    with pytest.raises(InternalError):
        fs.remove("file://%s/../outside/secret.txt" % work)
    assert (outside / "secret.txt").read_bytes() == b"original"


def test_hard_link_is_replaced_not_written_through(client, roots):
    work, outside = roots
    os.link(outside / "secret.txt", work / "hard")
    fs = client.fs.with_sandbox(restricted([work]))
    fs.write_file(work / "hard", b"new content")  # the directory entry is replaced atomically
    assert (work / "hard").read_bytes() == b"new content"
    assert (outside / "secret.txt").read_bytes() == b"original"


@pytest.mark.parametrize("confinement", [pytest.param("bwrap", marks=needs_bwrap), "checks-only"])
def test_directory_swapped_for_symlink_race(client, roots, confinement, monkeypatch, tmp_path):
    work, outside = roots
    if confinement == "checks-only":  # no bwrap on PATH: only the helper's own checks stand
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
    fs = client.fs.with_sandbox(restricted([work]))
    sub = work / "sub"
    sub.mkdir()
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            try:
                os.rmdir(sub)
                os.symlink(outside, sub)
                os.unlink(sub)
                os.mkdir(sub)
            except OSError:
                pass

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for i in range(40):
            try:
                fs.write_file(sub / ("f%d.txt" % i), b"x")
            except (InternalError, InvalidRequest, Exception):
                pass
    finally:
        stop.set()
        flipper.join(10)
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_helper_environment_is_the_allowlist(monkeypatch):
    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cret")
    monkeypatch.setenv("HOME", "/root-home")
    script = ("import json, os, sys; sys.stdin.read(); "
              "print(json.dumps({'status': 'ok', 'payload': {'operation': 'fs/readFile', "
              "'response': dict(os.environ)}}))")
    seen = run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(restricted(["/tmp"])),
                         command=[sys.executable, "-c", script])
    assert set(seen) <= set(FS_HELPER_ENV_ALLOWLIST) | {"LC_CTYPE"}
    assert "MY_SECRET_TOKEN" not in seen and "HOME" not in seen
    assert "s3cret" not in json.dumps(seen)


def test_helper_failure_becomes_internal_error():
    with pytest.raises(InternalError) as caught:
        run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(restricted(["/tmp"])),
                      command=[sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])
    assert caught.value.message == "fs sandbox helper failed with status exit status: 3: boom"
    with pytest.raises(InternalError) as caught:
        run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(restricted(["/tmp"])),
                      command=[sys.executable, "-c", "import json; print(json.dumps({'status': 'ok', "
                               "'payload': {'operation': 'fs/copy', 'response': {}}}))"])
    assert caught.value.message == "unexpected fs sandbox helper response: expected fs/readFile, got fs/copy"


def test_helper_runs_when_the_temporary_directory_is_gone(monkeypatch, tmp_path, caplog):
    """$TMPDIR removed under a running server (a cleaner): every sandboxed fs call failed with 'internal error'."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    script = ("import json, sys; sys.stdin.read(); sys.stderr.write('noise'); "
              "print(json.dumps({'status': 'ok', 'payload': {'operation': 'fs/readFile', 'response': {'ok': 1}}}))")
    assert run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(restricted(["/tmp"])),
                         command=[sys.executable, "-c", script]) == {"ok": 1}
    assert "no temporary file for its stderr" in caplog.text
    with pytest.raises(InternalError) as caught:
        run_fs_helper("fs/readFile", {"path": "file:///x"}, parse_sandbox(restricted(["/tmp"])),
                      command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    assert caught.value.message.startswith("fs sandbox helper failed with status exit status: 3")


def test_fake_bwrap_on_path_is_used(client, roots, tmp_path, monkeypatch):
    work, _outside = roots
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "bwrap-args.json"
    fake = bin_dir / "bwrap"
    fake.write_text("#!%s\nimport json, os, sys\nargs = sys.argv[1:]\nopen(%r, 'w').write(json.dumps(args))\n"
                    "inner = args[args.index('--') + 1:]\nos.execv(inner[0], inner)\n" % (sys.executable, str(log)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ["PATH"]))
    client.fs.with_sandbox(restricted([work])).write_file(work / "via-fake.txt", b"ok")
    args = json.loads(log.read_text())
    assert ["--bind", str(work), str(work)] == args[args.index("--bind"):args.index("--bind") + 3]
    assert "--unshare-net" in args
    assert ["--ro-bind", "/", "/"] == args[args.index("--ro-bind"):args.index("--ro-bind") + 3]
    assert (work / "via-fake.txt").read_bytes() == b"ok"


@needs_bwrap
def test_sandboxed_process(client, roots):
    work, outside = roots
    done = client.run(["/bin/sh", "-c", "echo ok > %s/in.txt; echo bad > %s/out.txt" % (work, outside)],
                      env_policy={"inherit": "core", "ignoreDefaultExcludes": False, "exclude": [], "set": {},
                                  "includeOnly": []}, timeout=30)
    assert done.returncode == 0  # no sandbox: both writes work
    (outside / "out.txt").unlink()
    process = client.start(["/bin/sh", "-c", "echo ok > %s/in2.txt; echo bad > %s/out.txt" % (work, outside)],
                           timeout=30, sandbox=restricted([work]))
    assert process.sandbox_type == "linuxSeccomp"
    _stdout, stderr = process.communicate(timeout=30)
    assert process.returncode != 0 and b"Read-only file system" in stderr
    assert (work / "in2.txt").read_bytes() == b"ok\n"
    assert not (outside / "out.txt").exists()
    read = process.read()
    assert read["sandboxDenied"] is True


def test_sandbox_unavailable_without_bwrap(client, roots, monkeypatch, tmp_path):
    work, _outside = roots
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(InternalError) as caught:
        client.start(["/bin/true"], sandbox=restricted([work]))
    assert caught.value.message == "sandbox unavailable: bubblewrap (bwrap) is not installed on this Linux host"


@pytest.mark.parametrize("entry, message", [
    ({"path": {"type": "glob_pattern", "pattern": "**"}, "access": "read"},
     "unsupported sandbox path type `glob_pattern`"),
    ({"path": {"type": "special", "value": {"kind": "tmpdir"}}, "access": "read"},
     "unsupported sandbox special path `tmpdir`"),
])
def test_unsupported_sandbox_variants(client, roots, entry, message):
    work, _outside = roots
    with pytest.raises(InvalidParams) as caught:
        client.fs.with_sandbox(restricted([work], extra=[entry])).read_file(work / "x")
    assert caught.value.message == message


def test_unrestricted_profiles_run_in_process(client, roots):
    work, _outside = roots
    for permissions in ({"type": "disabled"}, {"type": "external", "network": "restricted"},
                        {"type": "managed", "file_system": {"type": "unrestricted"}, "network": "enabled"}):
        fs = client.fs.with_sandbox({"permissions": permissions, "windowsSandboxLevel": "disabled"})
        fs.write_file(work / "free.txt", b"free")
    process = client.start(["true"], sandbox={"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"})
    assert process.sandbox_type == "none"
    process.wait(timeout=10)


def test_sandboxed_file_handles_are_refused(client, roots):
    work, _outside = roots
    with pytest.raises(InvalidParams) as caught:
        client.call("fs/open", {"handleId": "h", "path": "file://%s/x" % work, "sandbox": restricted([work])})
    assert caught.value.message == "sandboxed file handles are not supported"


@pytest.mark.parametrize("mode", ["read", "replace"])
def test_a_sandboxed_file_systems_open_is_refused_not_unconfined(client, roots, mode):
    """``with_sandbox(...).open`` sent no sandbox: it read and wrote past the profile, unconfined."""
    work, outside = roots
    secret = outside / "secret"
    secret.write_bytes(b"kept")
    fs = client.fs.with_sandbox(restricted([work], readable=str(work)))
    with pytest.raises(InvalidParams, match="^sandboxed file handles are not supported$"):
        fs.open(secret, mode)
    if mode == "replace":  # an unconfined replace truncated it at once
        assert secret.read_bytes() == b"kept"


def test_sandbox_shape_errors(client):
    with pytest.raises(InvalidParams) as caught:
        client.call("fs/readFile", {"path": "file:///tmp", "sandbox": {}})
    assert caught.value.message == "missing field `permissions`"
    with pytest.raises(InvalidParams) as caught:
        client.call("fs/readFile", {"path": "file:///tmp", "sandbox": {"type": "read-only"}})
    assert caught.value.message == "missing field `permissions`"
    with pytest.raises(InvalidParams) as caught:
        client.call("fs/readFile", {"path": "file:///tmp", "sandbox": {"permissions": {"type": "disabled"}}})
    assert caught.value.message == "missing field `windowsSandboxLevel`"


@needs_bwrap
def test_a_process_cannot_create_a_protected_path_that_does_not_exist_yet(client, roots):
    """``none`` and ``read`` entries for missing paths inside a writable folder hold (and leave nothing behind);
    writes into an existing ``none`` folder fail rather than vanish into its mask."""
    work, _outside = roots
    (work / "masked").mkdir()
    extra = [{"path": {"type": "path", "path": "file://%s/%s" % (work, name)}, "access": access}
             for name, access in (("absent-none", "none"), ("absent-read/deep", "read"), ("masked", "none"))]
    script = ("mkdir absent-none; echo leaked > absent-none/f; mkdir -p absent-read/deep; echo leaked > "
              "absent-read/deep/f; echo gone > masked/g; echo kept > other.txt")
    done = client.run(["/bin/sh", "-c", script], cwd=str(work), sandbox=restricted([work], extra=extra), timeout=30)
    assert done.returncode == 0  # the last command's status
    assert len(done.stderr.splitlines()) == 5, done.stderr  # mkdir, echo, mkdir -p, echo, echo: each refused
    wait_until(lambda: sorted(os.listdir(work)) == ["masked", "other.txt"], timeout=10)  # mount points removed
    assert (work / "other.txt").read_bytes() == b"kept\n" and os.listdir(work / "masked") == []


def test_mount_point_files_go_when_the_last_sandbox_using_them_has_closed(tmp_path):
    from exec_server.server.fs.mount_points import MountPoints

    points = MountPoints()
    anywhere, nowhere = (lambda folder: True), (lambda folder: False)
    made, kept = str(tmp_path / "a"), str(tmp_path / "kept")
    assert points.first_missing(made + "/b", anywhere) == (made, True)
    assert points.first_missing(made + "/b", nowhere) is None  # read-only there: nothing to create
    assert points.first_missing(str(tmp_path), anywhere) is None  # it exists
    (tmp_path / "kept").write_bytes(b"")
    assert points.first_missing(kept + "/x", anywhere) == (kept, False)  # under a file: the file is kept
    points.acquire([made])  # makes the file, before bubblewrap binds on it
    assert os.path.isfile(made) and points.first_missing(made + "/b", anywhere) == (made, True)  # ours: bound again
    points.acquire([made])
    points.release([made])
    assert os.path.exists(made)  # the second sandbox still uses it
    points.release([made])
    assert not os.path.exists(made)
    points.acquire([made])
    os.unlink(made)
    time.sleep(0.05)  # file times tick in jiffies: the next file's change time differs, if its inode number does not
    (tmp_path / "a").write_bytes(b"")  # someone else's empty file at that path now
    points.release([made])
    assert os.path.exists(made) and os.path.exists(kept)  # only the file made is ever removed


def entry(path, access):
    return {"path": {"type": "path", "path": "file://%s" % path}, "access": access}


@needs_bwrap
def test_two_sandboxes_at_once_keep_a_missing_path_protected(client, roots):
    """The second sandbox binds the first one's mount point file too; the first one's end does not unmount it."""
    work, _outside = roots
    sandbox = restricted([work], extra=[entry(work / "secret", "none"), entry(work / "deep" / "er", "read")])
    first = client.start(["sleep", "30"], sandbox=sandbox, timeout=30)
    wait_until(lambda: (work / "secret").exists() and (work / "deep").exists(), timeout=10)
    second = client.start(["/bin/sh", "-c", "read go; echo x > secret; mkdir -p deep/er; ls deep/er"], cwd=str(work),
                          sandbox=sandbox, stdin=True, timeout=30)
    first.terminate()
    assert first.wait(timeout=20) == 137
    wait_until(lambda: first.done, timeout=20)
    second.write(b"go\n")
    _out, err = second.communicate(timeout=30)
    assert second.returncode != 0 and err.count(b"\n") == 3, err  # each of the three refused
    wait_until(lambda: os.listdir(work) == [], timeout=10)  # both mount point files go with the last sandbox


@needs_bwrap
@pytest.mark.parametrize("name, entries", [
    ("a none folder with a readable folder inside", [("hidden", "none"), ("hidden/sub", "read")]),
    ("a missing path under a read-only folder", [("ro", "read"), ("ro/missing", "none")]),
    ("a missing path under a file (a worktree's .git)", [(".git/hooks", "read")]),
])
def test_profiles_around_missing_or_masked_paths_start(client, roots, name, entries):
    work, _outside = roots
    for folder in ("hidden/sub", "ro"):
        (work / folder).mkdir(parents=True)
    (work / "hidden" / "sub" / "ok.txt").write_bytes(b"ok")
    (work / ".git").write_bytes(b"gitdir: elsewhere\n")
    before = sorted(os.listdir(work))
    sandbox = restricted([work], extra=[entry(work / path, access) for path, access in entries])
    done = client.run(["/bin/sh", "-c", "cat hidden/sub/ok.txt 2>/dev/null; echo ran"], cwd=str(work),
                      sandbox=sandbox, timeout=30)
    assert (done.returncode, done.stderr) == (0, b""), (name, done.stderr)
    assert done.stdout.endswith(b"ran\n")
    assert client.fs.with_sandbox(sandbox).read_file(str(work / "hidden" / "sub" / "ok.txt")) == b"ok"  # the helper
    wait_until(lambda: sorted(os.listdir(work)) == before, timeout=10)


@needs_bwrap
def test_a_sandboxed_process_has_no_capability(client, roots):
    """Run by a root server it would keep CAP_SYS_ADMIN, enough to unmount its binds and remount / writable."""
    work, outside = roots
    done = client.run(["/bin/sh", "-c", "grep CapEff /proc/self/status; mount -o remount,bind,rw / 2>/dev/null; "
                       "echo changed > %s/secret.txt" % outside], sandbox=restricted([work]), timeout=30)
    assert done.stdout.split() == [b"CapEff:", b"0000000000000000"], done.stdout
    assert (outside / "secret.txt").read_bytes() == b"original"


@needs_bwrap
def test_a_file_above_a_protected_path_cannot_be_replaced_by_a_folder(client, roots):
    work, _outside = roots
    (work / "x").write_bytes(b"")  # e.g. what a killed server left, or a worktree's .git file
    done = client.run(["/bin/sh", "-c", "rm -f x; mkdir -p x; echo secret > x/y"], cwd=str(work),
                      sandbox=restricted([work], extra=[entry(work / "x" / "y", "none")]), timeout=30)
    assert done.returncode != 0 and (work / "x").is_file()


@needs_bwrap
def test_a_sandbox_started_just_before_the_server_is_killed_dies_with_it(tmp_path):
    """bubblewrap's --die-with-parent alone let a sandbox escape a server SIGKILLed while bubblewrap set up (its
    namespace's init arms the signal after its clone): 8 of 15 such sandboxes lived on; the guardian ends them."""
    from conftest import Peer, with_env

    for attempt in range(5):
        token = "%s-%d" % (os.urandom(8).hex(), attempt)
        server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            peer = Peer(server.stdout.readline().decode().strip())
            peer.initialize()
            peer.call("process/start", start_params("held", ["sleep", "60"], sandbox=restricted([tmp_path]),
                                                    env={"PATH": "/usr/bin:/bin", "SANDBOX_TOKEN": token}))
            server.kill()  # at once: bubblewrap is still setting up
            server.wait(10)
            peer.close()
            assert wait_until(lambda: not with_env("SANDBOX_TOKEN", token), timeout=10), attempt
        finally:
            reap(server)


@needs_bwrap
def test_the_guardians_marker_stays_out_of_a_sandboxed_programs_environment(client, roots):
    from exec_server.server.process.contain import MARKER_ENV

    work, _outside = roots
    done = client.run(["env"], sandbox=restricted([work]), env={"PATH": "/usr/bin:/bin", "ASKED": "1"}, timeout=30)
    assert done.returncode == 0 and b"ASKED=1\n" in done.stdout
    assert MARKER_ENV.encode() + b"=" not in done.stdout  # bubblewrap's processes carry it, not the program
