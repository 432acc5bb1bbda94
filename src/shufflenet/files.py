"""Writing result files so that an interrupted or failed write never leaves a half file or clobbers a good one."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def atomic_destination(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step,
    on an error it is deleted and ``path`` is left as it was."""
    path = Path(path)
    make_folder(path.parent)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.touch()  # an unwritable folder fails here, as an OSError: torch's and safetensors' writers raise others
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # a normal file's mode, whatever the writer chose (safetensors: 0600)
        os.replace(temporary, path)
    except OSError as error:
        if error.filename not in (str(temporary), str(path)) and error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise  # not this write's failure (e.g. an input read inside the block)
        raise UserError(f"cannot write {path}: {error.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder} cannot be a folder: a file of that name (or of a parent's) exists") from None
    except OSError as error:  # no permission, a read-only file system
        raise UserError(f"cannot create the folder {folder}: {error.strerror}") from None


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it
    os.umask(mask)
    return mask


def check_output(output: Path, force: bool, source: str | Path | None = None) -> Path:
    """Refuse to overwrite an existing file unless ``force``, and never write onto ``source``."""
    if source is not None and Path(source).exists() and output.resolve() == Path(source).resolve():
        raise UserError(f"{output} is the input file; choose another output with -o")
    if output.is_dir():
        raise UserError(f"{output} is a directory; give a file name with -o")
    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to overwrite it")
    return output
