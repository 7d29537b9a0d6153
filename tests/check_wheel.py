"""Packaging check (tox -e packaging): the wheel ships the schemas and they load.

Usage: python tests/check_wheel.py DIST_DIR
Installs the wheel found in DIST_DIR into a fresh virtual environment and
checks there that every schema loads, that the checks compiled ahead of time
are those of the installed files (else every cold start compiles them), and
that the console script runs.
"""

import glob
import os
import subprocess
import sys
import tempfile
import venv
import zipfile


def main(dist: str) -> int:
    wheels = glob.glob(os.path.join(dist, "*.whl"))
    if len(wheels) != 1:
        print("expected one wheel in %s, found %s" % (dist, wheels))
        return 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for required in ("exec_server/schemas/common.json", "exec_server/schemas/process/start.params.json",
                     "exec_server/schemas/initialize.params.json"):
        if required not in names:
            print("missing from the wheel: %s" % required)
            return 1
    with tempfile.TemporaryDirectory() as target:
        venv.create(target, with_pip=True)
        bindir = "Scripts" if os.name == "nt" else "bin"
        python = os.path.join(target, bindir, "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", wheels[0]], check=True)
        check = ("from exec_server.protocol.schemas import SchemaSet; s = SchemaSet.load(); s.check_all(); "
                 "assert s.has('process/start.params.json'), s.names(); "
                 "from exec_server.protocol import prebuilt_checks; assert s.digest == prebuilt_checks.DIGEST; "
                 "print(len(s.names()), 'schemas')")
        subprocess.run([python, "-c", check], check=True, cwd=target)
        subprocess.run([os.path.join(target, bindir, "exec-server"), "--version"], check=True, cwd=target)
    print("wheel OK: %s" % os.path.basename(wheels[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
