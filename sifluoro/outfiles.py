"""Output files written whole or not at all: a reader never sees half a summary or report."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

from sifluoro.errors import ConfigError
from sifluoro.model import first_few


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing the
    threads that write files meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def replaced(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` when the block ends
    without an error (removed when it fails). The file gets the permissions ``open`` would
    give it (the umask's; a temporary file is 0600), or those of the file it replaces. A path
    that exists and is not a regular file (``/dev/null``, a FIFO) is written in place:
    renaming over it would replace the device with a file when run as root."""
    path = Path(path)
    if path.is_symlink():  # the file it names is replaced, the link stays
        path = path.resolve()
    try:
        st_mode = path.stat().st_mode
    except FileNotFoundError:
        st_mode = None
    encoding = None if "b" in mode else "utf-8"
    if st_mode is not None and not stat.S_ISREG(st_mode):
        with open(path, mode, encoding=encoding) as out:
            yield out
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as out:
            yield out
        try:
            os.chmod(tmp, stat.S_IMODE(st_mode) if st_mode is not None else 0o666 & ~_umask())
        except OSError:  # a file system without modes (FAT, some SMB mounts): its own rules
            pass
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_some_input_exists(inputs: tuple[str | Path, ...]) -> None:
    """Raise :class:`ConfigError` when not one of ``inputs`` exists (a mistyped path): the
    command would otherwise write a summary of zero frames and zero dose for a study it never
    read. One missing among several is the reader's to report, the rest being read."""
    if inputs and not any(os.path.exists(p) for p in inputs):  # a broken link: as the reader
        raise ConfigError(f"{first_few(inputs)}: no such file or folder; nothing was read or "
                          "written")


def check_writable(inputs: tuple[str | Path, ...] = (), **paths: str | Path | None) -> None:
    """Raise :class:`ConfigError` naming the option (``rdsr=...``) whose output cannot be
    written (a folder, or a place that cannot be made or written), would overwrite one of the
    ``inputs`` (a file named, or one inside a folder named: a study's own files) or is another
    option's output too, before any work is done: found at the end, it lost the outputs
    written after it."""
    taken: dict[Path, str] = {}
    read: set[Path] | None = None  # the files the inputs give, as the reader walks them
    for option, path in paths.items():
        if path is None:
            continue
        path = Path(path)
        flag = _flag(option)
        where = _resolved(path)
        special = where.exists() and not where.is_file() and not where.is_dir()
        if where in taken and not special:  # /dev/null may take several
            raise ConfigError(f"{flag} {path}: is the {taken[where]} output too; give each "
                              "output its own file")
        taken[where] = flag
        if where.is_file() and inputs:
            if read is None:
                from sifluoro.acquire.dicom_reader import iter_input_files

                read = {_resolved(p) for p in iter_input_files(inputs)}
            if where in read:  # sifluoro's own outputs beside a study are not read
                raise ConfigError(f"{flag} {path}: is one of the input files; it would be "
                                  "overwritten (write the outputs elsewhere)")
        if path.is_dir():
            raise ConfigError(f"{flag} {path}: is a folder, not a file")
        if path.exists() and not path.is_file():  # /dev/null, a FIFO: written in place
            if not os.access(path, os.W_OK):
                raise ConfigError(f"{flag} {path}: not writable")
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"{flag} {path}: a file stands where its folder should be "
                              "(a path through a file)") from None
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: its folder cannot be made "
                              f"({exc.strerror or exc})") from None
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: its folder is not writable")


def check_folder_writable(**folders: str | Path | None) -> None:
    """As :func:`check_writable`, for options that name a folder to write files into (made
    when missing). A positional argument is given in capitals (``OUTDIR=...``)."""
    for option, folder in folders.items():
        if folder is None:
            continue
        folder = Path(folder)
        flag = _flag(option)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{flag} {folder}: is a file, not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"{flag} {folder}: a file stands on its path") from None
        except OSError as exc:
            raise ConfigError(f"{flag} {folder}: cannot be made ({exc.strerror or exc})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {folder}: not writable")


def _flag(option: str) -> str:
    """``rdsr`` -> ``--rdsr``; a positional argument is named in capitals (``OUTDIR``)."""
    return option if option.isupper() else "--" + option.replace("_", "-")


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(path))
