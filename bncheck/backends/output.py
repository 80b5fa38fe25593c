"""Where models go: choosing the output kind, guarding paths, writing files atomically.

Shared by ``fold`` and ``recalibrate``. The contract's rule: ``--to onnx|export|torchscript|
state-dict`` or OUT's extension (``.onnx``, ``.pt2``, ``.ts``, ``.safetensors``) picks the kind;
``.pt``/``.pth`` mean "the same kind as the input" (a state dict stays a state dict,
TorchScript stays TorchScript, a pickled module stays a pickled module). MODEL is never
overwritten, OUT only with ``force``, and every file appears complete or not at all.

The writers themselves belong to the backends (``backends/onnx/write.py``,
``backends/torch/write.py``); this module holds what they share.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from bncheck.backends.output_guard import (
    fsync_file,
    fsync_folder,
    is_special_file,
    is_stdout,
    write_in_place,
)
from bncheck.errors import BncheckError, OutputError, UsageError

#: ``--to`` values and what they write.
OUTPUT_KINDS = {
    "onnx": "ONNX (.onnx)",
    "export": "torch.export program (.pt2)",
    "torchscript": "TorchScript archive (.ts)",
    "state-dict": "state dict (.safetensors, .pt, .pth)",
}
#: Extensions that name one kind.
EXTENSION_KINDS = {".onnx": "onnx", ".pt2": "export", ".ts": "torchscript", ".safetensors": "state-dict"}
#: Extensions that mean "the same kind as the input".
SAME_KIND_EXTENSIONS = (".pt", ".pth")
#: Input format (``ModelSource.format``) -> the kind a ``.pt``/``.pth`` OUT means.
SAME_KIND = {
    "state_dict": "state-dict",
    "torchscript": "torchscript",
    "export": "export",
    "pickle": "pickle",
}


def write_atomically(path: Path, writer: Callable[[str], object]) -> None:
    """Call ``writer(tmp_path)`` then move the temporary file onto ``path``.

    The temporary file lives in the destination folder (so the final rename is atomic) and
    is removed on any failure: readers never see half a file. The result gets the permissions
    of the file it replaces, or those of a newly created file (0666 less the umask), not the
    0600 of a temporary file.
    """
    if is_stdout(path) or is_special_file(Path(path)):
        write_in_place(path, writer)  # /dev/null, a FIFO, stdout: written into, never replaced
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; name a file in it instead.")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist.")
    # The temporary name keeps the extension: some writers (torch.export.save) check it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=folder)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _final_mode(path))
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_folder(folder)
    except BncheckError:
        _unlink(tmp)
        raise
    except OSError as exc:
        _unlink(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from exc
    except BaseException:
        _unlink(tmp)
        raise


def _final_mode(path: Path) -> int:
    """The permission bits ``path`` should end with: kept when it exists, else 0666 less the
    process umask (what ``open(path, "w")`` would have given)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(mask)
        return 0o666 & ~mask


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def output_kind(out: Path, to: str | None, input_format: str) -> str:
    """The kind of model to write to ``out``: onnx, export, torchscript, state-dict or pickle.

    Raises :class:`UsageError` when ``--to`` and the extension disagree, when neither names a
    kind, or when ``.pt``/``.pth`` has no "same kind" for this input.
    """
    suffix = Path(out).suffix.lower()
    if Path(out).is_dir():  # before the extension: "(none)" would send the user the wrong way
        raise UsageError(f"OUT {out} is a directory; name the file to write in it.")
    if to is not None:
        to = to.strip().lower().replace("_", "-")
        if to == "statedict":
            to = "state-dict"
        if to not in OUTPUT_KINDS:
            raise UsageError(f"--to {to!r} is not an output kind; choose one of: {', '.join(OUTPUT_KINDS)}.")
        ext_kind = EXTENSION_KINDS.get(suffix)
        if ext_kind is not None and ext_kind != to:
            raise UsageError(
                f"--to {to} contradicts OUT's extension {suffix} (which means {ext_kind}); "
                f"change one of them."
            )
        if suffix in SAME_KIND_EXTENSIONS and to == "onnx":
            raise UsageError(f"--to onnx with OUT {out}: name an ONNX file .onnx.")
        return to
    if suffix in EXTENSION_KINDS:
        return EXTENSION_KINDS[suffix]
    if suffix in SAME_KIND_EXTENSIONS:
        if input_format == "onnx":
            raise UsageError(
                f"OUT {out} ends in {suffix}, which means the input's kind, but the input is ONNX: "
                "name the output .onnx."
            )
        kind = SAME_KIND.get(input_format)
        if kind is None:
            raise UsageError(
                f"OUT {out} ends in {suffix}, which means the same kind as the input, but an "
                f"in-memory {input_format} has no file kind; pass --to "
                f"{'|'.join(OUTPUT_KINDS)} or use .onnx/.pt2/.ts/.safetensors."
            )
        return kind
    shown = suffix or "(none)"
    raise UsageError(
        f"cannot tell the output format from OUT's extension {shown}; use .onnx, .pt2, .ts, "
        f".safetensors (.pt/.pth: same kind as the input) or pass --to {'|'.join(OUTPUT_KINDS)}."
    )


#: what ends a directory's name: "/" everywhere, and the platform's own separators
SEPARATORS = tuple({"/", os.sep, *([os.altsep] if os.altsep else [])})


def names_a_directory(text: object) -> bool:
    """Whether ``text``, a path as typed, ends in a separator (pathlib would drop it)."""
    return isinstance(text, str) and text.endswith(SEPARATORS) and bool(text.rstrip("".join(SEPARATORS)))


def slash_problem(text: str) -> str:
    return f"{text} ends in a slash, so it names a directory; name the file to write (without the slash)"


def file_path(out: str | Path, option: str = "out") -> Path:
    """``out`` as a Path; a string ending in a path separator names a directory (which Path
    would silently drop): UsageError naming the fix."""
    text = os.fspath(out)
    if names_a_directory(text):
        raise UsageError(f"{option} {slash_problem(text)}.")
    return Path(text)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (after resolving links, or the same inode)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(
    out: Path,
    *,
    protected: Iterable[Path] = (),
    force: bool = False,
    companions: Iterable[Path] = (),
) -> None:
    """Refuse to write ``out`` (or its ``companions``, e.g. ONNX external data) over a
    ``protected`` input file, or over an existing file without ``force``."""
    out = Path(out)
    targets = [out, *companions]
    for target in targets:
        for guard in protected:
            if guard is not None and same_file(target, Path(guard)):
                raise OutputError(
                    f"refusing to overwrite the input model {guard} with {target}; choose another OUT path."
                )
    if out.exists() and out.is_dir():
        raise OutputError(f"OUT {out} is a directory; name the file to write.")
    if not force:
        for target in targets:
            if target.exists():
                raise OutputError(f"{target} already exists; pass --force to overwrite it.")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {out}: folder {folder} does not exist.")


#: ``fold`` without OUT: the kind a model of each input format is folded into.
DEFAULT_KINDS = {"onnx": "onnx", "torchscript": "torchscript", "export": "export"}


#: input formats that can only be written as their own kind: what the input is, how to ask for
#: that kind, and why no other kind can be written
OWN_KIND_ONLY = {
    "onnx": ("an ONNX model", "ONNX (OUT .onnx or --to onnx)", "bncheck does not convert ONNX to PyTorch formats."),
    "torchscript": (
        "a TorchScript model",
        "TorchScript (OUT .ts/.pt or --to torchscript)",
        "it leaves no module structure to convert; use the state dict with --arch to get other formats.",
    ),
}


def choose_output_kind(out: Path | None, to: str | None, input_format: str) -> str:
    """:func:`output_kind` for OUT and ``--to``; without OUT, ``--to`` or the input's own
    kind (a module stays a module). UsageError when an input of :data:`OWN_KIND_ONLY` would
    be written as another kind."""
    if out is not None:
        kind = output_kind(out, to, input_format)
    elif to is not None:
        kind = output_kind(Path("x"), to, input_format)
    else:
        kind = DEFAULT_KINDS.get(input_format, "module")
    if input_format in OWN_KIND_ONLY and kind != input_format:
        what, ask, why = OWN_KIND_ONLY[input_format]
        raise UsageError(f"{what} can only be written as {ask}, not {kind}: {why}")
    return kind
