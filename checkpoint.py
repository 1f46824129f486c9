"""
What a run writes and reads on disk, so that nothing is lost or half-read in silence: files are replaced whole (a
kill or a full disk leaves the old file, never half a new one), a damaged or foreign file reads as one line that
says so, never a traceback, a run's out_dir is locked against a second run, and no weights that are not finite
reach a checkpoint. Readers raise ValueError (their callers say what the file was for); writers, which a run
cannot go on without, stop it with a one-line SystemExit.

    with replacing(path) as tmp: fig.savefig(tmp, format="png")   # path appears only once the write succeeded
    save(ckpt, "out/ntp/ckpt.pt", kept="the last checkpoint is kept")
    record = load_record("out/ntp/ckpt.pt", "a train.py checkpoint", fix="retrain it")
"""
import contextlib
import json
import os
import shutil

import torch

try:
    import fcntl  # the out_dir lock; POSIX only
except ImportError:
    fcntl = None


# -----------------------------------------------------------------------------
# reading: a checkpoint, or one line that says why not

def short(e):
    """An exception's first sentence, for a one-line message."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first.split(". ")[0][:120]


def load_record(path, what, fix):
    """The dict that torch.save wrote at path (tensors memory-mapped, so a large file costs little), or a
    one-line ValueError saying why it cannot be `what`: a directory, an empty, foreign or damaged file (a disk
    that filled up during a save truncates it). fix: how to get a good one."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not {what}: {fix}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror}): check its permissions") from None
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        reason = "the file is empty" if not head else "not a torch.save file"
        raise ValueError(f"{path} is damaged or not {what} ({reason}): {fix}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # torch.load has no error type of its own: any failure here means a bad file
        raise ValueError(f"{path} is damaged or not {what} (cut short or corrupt: {short(e)}): {fix}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is damaged or not {what} (it holds a {type(record).__name__}): {fix}")
    return record


def find(path, name):
    """The checkpoint file that path names: path itself if it is a file or ends in .pt, else the file name in the
    directory path (a run's out_dir)."""
    return path if path.endswith(".pt") or os.path.isfile(path) else os.path.join(path, name)


def train_record(path):
    """(file, record) of a train.py checkpoint, path being its out_dir or its ckpt.pt: what load_record reads,
    once it is known to hold a model, its model_args and the meta of its dataset. Raises a one-line ValueError
    if the file is missing, damaged, of another kind (an SAE), or records no meta."""
    path = find(path, "ckpt.pt")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: train a model first (python train.py --out_dir={os.path.dirname(path)})")
    fix = "give a train.py out_dir or its ckpt.pt, or retrain it if it was damaged"
    record = load_record(path, "a train.py checkpoint", fix)
    if "sae" in record:
        raise ValueError(f"{path} is an SAE (sae.py), not a train.py checkpoint: {fix}")
    if "model" not in record or "model_args" not in record:
        raise ValueError(f"{path} is damaged or not a train.py checkpoint (it holds no model): {fix}")
    if "meta" not in record:
        raise ValueError(f"{path} records no dataset meta (an older train.py wrote it): resume it once with "
                         "python train.py --init_from=resume, or retrain it")
    return path, record


def sae_record(path):
    """(file, record) of a sae.py checkpoint, path being its out_dir or its sae.pt: what load_record reads, once
    it is known to hold an SAE and to name its teacher. Raises a one-line ValueError otherwise."""
    path = find(path, "sae.pt")
    if not os.path.exists(path):
        raise ValueError(f"SAE checkpoint {path} not found: train one with `python sae.py`")
    fix = f"train the SAE again (python sae.py --overwrite --out_dir={os.path.dirname(path) or '.'})"
    record = load_record(path, "an SAE checkpoint", fix)
    if "sae" not in record:
        raise ValueError(f"{path} is not an SAE checkpoint: give a sae.pt that python sae.py wrote")
    if "teacher_path" not in record:
        raise ValueError(f"{path} was written by an older sae.py (it does not name its teacher_path): {fix}")
    return path, record


# -----------------------------------------------------------------------------
# writing: whole files, and never weights that are not finite

@contextlib.contextmanager
def replacing(path):
    """Yield path + ".tmp" to write path's new content to; it is renamed over path once the block succeeds, and
    removed if the block fails. A writer that picks the format by the file's extension (savefig) must be told it."""
    tmp = path + ".tmp"
    try:
        yield tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_json(obj, path, **kw):
    """json.dump obj to path, replacing it whole (replacing)."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, **kw)


def free_mib(path):
    """The free space, in MiB, on the disk that holds path (or, while it does not exist, its nearest parent)."""
    while not os.path.isdir(path):
        path = os.path.dirname(path) or "."
    return shutil.disk_usage(path).free >> 20


def save(obj, path, kept):
    """torch.save obj to path, replacing it whole. A write that fails (a full disk, shown by torch as a
    RuntimeError "unexpected pos") leaves the file at path as it was and stops the run with the free space;
    kept: what the run still has, for that message."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with replacing(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as e:
        raise SystemExit(f"error: could not write {path} ({type(e).__name__}, {free_mib(path)} MiB free): the disk "
                         f"is full or not writable; free space, then resume with --init_from=resume; {kept}") from None


def remove_stale(*paths):
    """Remove what a killed write left of these files (their .tmp); the files themselves are whole."""
    for path in paths:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")


def finite(module):
    """Whether every weight of module is finite; one that is not must never reach a checkpoint."""
    return bool(torch.stack([p.isfinite().all() for p in module.parameters()]).all())


# -----------------------------------------------------------------------------
# the out_dir: one run at a time, and never one run over another

def check_new_run(out_dir, files):
    """A new run not given --overwrite must not replace the run in out_dir: stop if any of its files are there."""
    held = [f for f in files if os.path.exists(os.path.join(out_dir, f))]
    if held:
        raise SystemExit(f"error: {out_dir} already holds a run ({', '.join(held)}): resume it with "
                         "--init_from=resume, replace it with --overwrite, or use another --out_dir")


def claim_out_dir(out_dir):
    """Create out_dir and lock it (out_dir/.lock, which names this process) while the returned file is open. The OS
    drops a flock when its process dies, even by kill -9, so a stale lock never blocks. Stops the run if out_dir is
    not writable or another run holds it."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(13, "not writable")  # else an existing .lock would still open
        lock = open(os.path.join(out_dir, ".lock"), "a+")
    except OSError as e:
        raise SystemExit(f"error: cannot write to out_dir {out_dir} ({e.strerror}): choose a writable --out_dir") \
            from None
    if fcntl:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise SystemExit(f"error: {out_dir} is in use by another run (pid {lock.read().strip() or '?'}): wait for "
                             "it or stop it, or use another --out_dir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
