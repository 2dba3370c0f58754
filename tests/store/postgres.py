"""A throwaway PostgreSQL server for the store tests.

:func:`postgres_server` gives a :class:`PostgresServer`, in this order of choice:

1. ``BRAINMAP_TEST_POSTGRES_URL`` (``postgresql://user@host:port/db``): an existing server; databases for the
   tests are created on it (the user needs CREATEDB), or, failing that, the given database is used as it is;
2. ``initdb`` on the PATH or under ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package): a new
   cluster in a temporary folder, listening on a free loopback port (and a socket in that folder), with
   ``fsync`` off, stopped and deleted at the end. As root it runs as the ``postgres`` user (initdb refuses
   root);
3. otherwise a reason to skip, which the PostgreSQL variant of the tests reports.

Nothing here touches any other cluster: the server is ours, in our temp folder, on a port we picked.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ENV_URL = "BRAINMAP_TEST_POSTGRES_URL"


class PostgresUnavailable(RuntimeError):
    """Why there is no PostgreSQL server for the tests."""


def _normalize(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def find_initdb() -> Path | None:
    """``initdb`` on the PATH or in the newest ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which("initdb")
    if found:
        return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return Path(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A server the tests may create databases on; :meth:`stop` ends it if we started it."""

    admin_url: str
    process: subprocess.Popen | None = None
    folder: Path | None = None
    created: list[str] = field(default_factory=list)
    can_create: bool = True

    def new_database(self, prefix: str = "brainmap_test") -> str:
        """A new empty database's URL (or the given database, emptied, when we may not create databases)."""
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        if not self.can_create:
            self._empty(self.admin_url)
            return self.admin_url
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except Exception:
            if self.process is not None:
                raise
            self.can_create = False
            engine.dispose()
            return self.new_database(prefix)
        finally:
            engine.dispose()
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    @staticmethod
    def _empty(url: str) -> None:
        from sqlalchemy import create_engine

        from brainmap.store.models import Base

        engine = create_engine(url)
        try:
            Base.metadata.drop_all(engine)
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Drop the databases we made on someone else's server; stop and delete our own server."""
        if self.process is None:
            if self.created:
                from sqlalchemy import create_engine

                engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
                try:
                    with engine.connect() as connection:
                        for name in self.created:
                            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except Exception:
                    pass
                finally:
                    engine.dispose()
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _as_postgres_user() -> dict:
    """subprocess keywords to run as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no 'postgres' user to run initdb as") from None
    return {"user": "postgres", "group": "postgres"}


def start_cluster(initdb: Path) -> PostgresServer:
    """A new cluster in a temporary folder on a free loopback port."""
    bindir = initdb.parent
    folder = Path(tempfile.mkdtemp(prefix="brainmap-pg-"))
    as_user = _as_postgres_user()
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
        os.chmod(folder, 0o700)
    data = folder / "data"
    try:
        subprocess.run([str(initdb), "-D", str(data), "-A", "trust", "-U", "brainmap", "-E", "UTF8",
                        "--locale=C", "--no-sync"], check=True, capture_output=True, text=True, timeout=120,
                       **as_user)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {exc.stderr.strip()[-500:]}") from None
    for _attempt in range(5):
        port = _free_port()
        log = open(folder / "server.log", "ab")
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(folder),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=40", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, **as_user)
        log.close()
        url = f"postgresql+psycopg://brainmap@127.0.0.1:{port}/postgres"
        if _wait_ready(url, process):
            return PostgresServer(url, process, folder)
        process.terminate()
        process.wait(timeout=20)
    tail = (folder / "server.log").read_text(errors="replace")[-800:]
    shutil.rmtree(folder, ignore_errors=True)
    raise PostgresUnavailable(f"the PostgreSQL server did not start: {tail}")


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 30.0) -> bool:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with psycopg.connect(plain, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.2)
    return False


def postgres_server() -> PostgresServer:
    """The server the tests use (see the module docstring); raises :class:`PostgresUnavailable` saying why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg (psycopg[binary]) is not installed") from None
    url = os.environ.get(ENV_URL)
    if url:
        return PostgresServer(_normalize(url))
    initdb = find_initdb()
    if initdb is None:
        raise PostgresUnavailable(f"no PostgreSQL: set {ENV_URL}, or install the server (Debian: apt-get install "
                                  "postgresql) so that initdb is under /usr/lib/postgresql/*/bin")
    return start_cluster(initdb)
