"""File access for work dirs that may live on a local disk or a bucket (gs://..., via etils.epath).

Writes are atomic: the bytes go to a temporary name beside the target, then a rename, so a
reader never sees half a file and an interrupted write leaves the old file in place.
"""

import io
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

if TYPE_CHECKING:
    from PIL import Image


def is_remote(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def makedirs(path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def rename(source: str, target: str) -> None:
    """Move a file or folder (a bucket moves folders by copying; local folders are renamed)."""
    epath.Path(source).rename(target)


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def read_json(path: str) -> Any:
    """A JSON file's content; one error naming the file when it is not valid JSON."""
    try:
        return json.loads(read_text(path))
    except ValueError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}): it was damaged; restore it or use a new work dir"
        ) from err


def read_bytes(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str) -> None:
    """Remove the temporaries a killed writer of `path` left beside it (.NAME.tmpPID whose PID
    no longer runs); a live writer's stays. Local paths only (a bucket has no PIDs to ask)."""
    if is_remote(path):
        return
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.tmp"
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        pid = entry[len(prefix) :]
        if entry.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(os.path.join(folder, entry))
            except FileNotFoundError:  # another process removed it first
                pass


def write_bytes_atomic(path: str, data: bytes) -> None:
    remove_stale_temporaries(path)
    target = epath.Path(path)
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    try:
        tmp.write_bytes(data)
        tmp.replace(target)  # overwrites, as os.replace does
    except BaseException as err:
        if tmp.exists():  # a failed write (a full disk) leaves nothing half-written behind
            tmp.unlink()
        if isinstance(err, OSError) and err.errno is not None and not err.filename:
            raise OSError(err.errno, f"{err.strerror} (writing {path})") from err  # name it
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def save_npz(path: str, compressed: bool = False, **arrays: Any) -> None:
    """Arrays to an .npz file, atomically (also on a bucket: numpy writes to a buffer first)."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
    """{name: array} from an .npz file, read whole (also from a bucket)."""
    with np.load(io.BytesIO(read_bytes(path))) as data:
        return {k: data[k] for k in data.keys()}


def append_line(path: str, line: str) -> None:
    """Append one line (buckets have no append: read, add, write back atomically)."""
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(line + "\n")
        return
    old = read_text(path) if exists(path) else ""
    write_text_atomic(path, old + line + "\n")


def save_png(image: "Image.Image", path: str) -> None:
    """A PIL image -> PNG file, atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
