import glob
import os
import shutil
import subprocess
import tempfile

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


def _postgres_bin() -> str | None:
    """The folder of the newest installed PostgreSQL's initdb and pg_ctl (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3])
                   if p.split("/")[-3].isdigit() else 0)
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        return None
    folder = os.path.dirname(os.path.realpath(initdb))
    return folder if all(os.path.isfile(os.path.join(folder, b)) for b in ("pg_ctl", "createdb")) else None


def _postgres_driver() -> str | None:
    """SQLAlchemy's dialect+driver for the PostgreSQL driver that imports here."""
    for module, dialect in (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")):
        try:
            __import__(module)
            return dialect
        except ImportError:
            pass
    return None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server for one test: initdb into a fresh folder, listening only on a unix socket in
    that folder (no TCP port to collide on), trust authentication, fsync off; yields the SQLAlchemy URL of a fresh
    database and stops the server (immediate) and removes the folder afterwards, whatever the test did. PostgreSQL
    refuses to run as root: as root the server runs as the ``postgres`` user the Debian package creates. Skipped,
    saying what is missing, without the server binaries (``apt-get install postgresql``) or a driver
    (``pip install psycopg2-binary``, in the dev extra)."""
    dialect, bindir = _postgres_driver(), _postgres_bin()
    if dialect is None:
        pytest.skip("PostgreSQL case: no driver imports (psycopg2 or psycopg); pip install psycopg2-binary")
    if bindir is None:
        pytest.skip("PostgreSQL case: no initdb/pg_ctl/createdb under /usr/lib/postgresql/*/bin or on PATH "
                    "(apt-get install postgresql)")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL case: running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("PostgreSQL case: running as root and runuser (util-linux) is missing")
        prefix = [runuser, "-u", "postgres", "--"]
    # short and under /tmp itself: a unix socket path has ~100 characters at most, and the postgres user cannot
    # enter pytest's tmp_path (under a 0700 folder of root's)
    root = tempfile.mkdtemp(prefix="spikesearch-pg-")
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)

    def pg(*args, check=True):
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60, check=check, cwd=root)

    started = False
    try:
        try:
            pg(os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E",
               "UTF8", "--locale=C", "--no-instructions")
            with open(os.path.join(data, "postgresql.conf"), "a") as conf:
                conf.write(f"\nlisten_addresses = ''\nunix_socket_directories = '{root}'\nfsync = off\n"
                           "synchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\n"
                           "max_connections = 60\n")
            started = True
            start = pg(os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log, "-w", "-t", "30", "start", check=False)
            if start.returncode != 0:
                tail = open(log).read()[-2000:] if os.path.exists(log) else ""
                pytest.fail(f"PostgreSQL did not start: {start.stdout}{start.stderr}{tail}")
            pg(os.path.join(bindir, "createdb"), "-h", root, "-U", "postgres", "spikesearch")
        except subprocess.CalledProcessError as e:
            pytest.fail(f"PostgreSQL set-up failed: {' '.join(e.cmd)}: {e.stdout}{e.stderr}")
        yield f"{dialect}://postgres@/spikesearch?host={root}"
    finally:
        if started:
            pg(os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
