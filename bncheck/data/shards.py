"""Shards of DATA (``--shard K/N``): parsing the option and the file range of one shard."""

from __future__ import annotations

from bncheck.errors import UsageError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/8"`` -> ``(2, 8)``: the third of eight shares (K is 1-based on the command line,
    as in a job array's ``$SLURM_ARRAY_TASK_ID`` counted from 1; ``0/8`` is refused)."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not sep or n_i < 1 or not 1 <= k_i <= n_i:
        raise UsageError(f"--shard {text!r} must be K/N with 1 <= K <= N (e.g. 3/8 for the third of eight shares).")
    return k_i - 1, n_i


def shard_range(files: int, shard: tuple[int, int] | None, align: int = 1) -> range:
    """The file indices of shard ``(k, n)`` (0-based k) among ``files`` files.

    With ``align`` > 1 (the batch size, for one-sample files) the boundaries fall on multiples
    of ``align``, so a sharded run computes exactly the batches of a one-process run and the
    merged statistics equal its statistics to float64 rounding; that needs at least ``n``
    groups of ``align`` files, and below that the boundaries fall on single files."""
    if shard is None:
        return range(files)
    k, n = shard
    units = -(-files // align) if align > 1 else files
    if units < n:
        align, units = 1, files
    return range(min(files, (k * units // n) * align), min(files, ((k + 1) * units // n) * align))
