"""Resuming long training runs after preemption (DESIGN decision 8).

A 600-epoch curve on a shared GPU must not restart from zero when its job is
killed. A training run saves its whole state — weights or bends, optimizer
(momentum buffers included), schedule position, random states, epoch, the
rows logged so far — at the end of every epoch, into one file whose name is
a fingerprint of everything that determines the run (settings, runtime, the
content of its input files, the code: DESIGN decision 10). A rerun with the
same fingerprint continues after the last saved epoch and, on a CPU, ends bit
for bit where an uninterrupted run ends. A state saved under another
fingerprint is never used: it is deleted when a run with a new fingerprint
starts, with one warning that names what changed (the state records the
components of its key, see :func:`what_changed`). A file that cannot be
read, or that is of another format, is ignored with a one-line warning; so
is one whose content does not fit the run (:class:`StaleState`, e.g. a file
of another code version: the stage command deletes it and starts the run
over). A finished run deletes its state.

    state = ResumeState(folder, fingerprint(config, digest(input_file), ...))
    saved = state.load()              # None, or the dict of the last finished epoch
    for epoch in range(saved["epoch"] + 1 if saved else 1, epochs + 1):
        ...train one epoch...
        state.epoch_done(epoch, {...})  # save; and stop here if asked to (preemption drill)
    state.clear()

For drills and tests, ``stop_after`` (or the environment variable
``MODECONN_STOP_AFTER_EPOCHS``) ends the process as a preemption would, with
:class:`Preempted`, right after the state of that many epochs is saved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModeconnError
from .io import atomic_torch_save
from .runtime import CPU, Runtime

log = logging.getLogger(__name__)

FORMAT = "modeconn.resume/1"
STOP_ENV = "MODECONN_STOP_AFTER_EPOCHS"


class Preempted(ModeconnError):
    """The run stopped on purpose after saving its state (a preemption drill); rerun it to continue."""


class StaleState(ModeconnError):
    """A loaded state that does not fit the run (keys it lacks, weights or momentum of other shapes): a file
    of another code version under the right key. :func:`discard_loaded` deletes it; the run starts over."""


class _Saved(dict):
    """A loaded state: a key it lacks is a :class:`StaleState`, not a KeyError deep inside a stage."""

    def __missing__(self, key: Any) -> Any:
        raise StaleState(f"it has no {key!r}")


_loaded: list[Path] = []  # the state file the last load() of this process returned


def discard_loaded(exc: Exception) -> None:
    """Warn (one line) that the state file last loaded does not fit, and delete it: training starts over."""
    while _loaded:
        path = _loaded.pop()
        log.warning("ignoring resume state %s (%s); starting from scratch", path, str(exc).splitlines()[0][:150])
        path.unlink(missing_ok=True)


def digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes (inputs enter a fingerprint by content, not by name or date)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short hex key of JSON-able ``parts`` (dataclasses are taken as dicts)."""
    plain = [asdict(p) if is_dataclass(p) and not isinstance(p, type) else p for p in parts]
    text = json.dumps([FORMAT, *plain], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def as_plain(value: Any) -> Any:
    """``value`` as plain JSON data (a dataclass as a dict, tuples as lists, anything else by ``str``): how a
    setting enters a fingerprint, and how a state records it (so a later run can name what changed)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def code_digests(*packages: Path | str) -> dict[str, str]:
    """The SHA-256 of every ``.py`` file under the folders ``packages``, by its path from the package's parent
    (``modeconn/curves.py``). Read once per process (cached): the code that runs is the code imported at start."""
    return dict(_code_digests(tuple(Path(p).resolve() for p in packages)))


@functools.cache
def _code_digests(packages: tuple[Path, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (path.relative_to(package.parent).as_posix(), digest(path))
        for package in packages
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    )


def what_changed(old: Any, new: dict) -> str:
    """What differs between the ``parts`` a state was saved under (``old``) and those of this run (``new``):
    ``{"settings": {name: value}, "inputs": {name: digest}, "code": {file: digest}}``, e.g.
    "other code (modeconn/curves.py changed)" — short enough for one log line."""
    if not isinstance(old, dict):
        return "other settings, inputs or code (the state does not record which)"
    said = []
    for part in ("settings", "inputs", "code"):
        names = _differing(old.get(part) or {}, new.get(part) or {})
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            said.append(f"other {part} ({', '.join(names[:3])}{more} changed)")
    return " and ".join(said) or "another resume format"


def _differing(old: dict, new: dict) -> list[str]:
    """The names whose values differ (one level down where both are dicts: ``curve.lr``)."""
    names = []
    for name in sorted(set(old) | set(new), key=str):
        a, b = old.get(name, _ABSENT), new.get(name, _ABSENT)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"{name}.{k}" for k in sorted(set(a) | set(b), key=str) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
        else:
            names.append(str(name))
    return names


_ABSENT = object()


def saved_parts(path: Path) -> Any:
    """The ``parts`` recorded in the state file ``path`` (None where it has none or cannot be read)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return state.get("parts") if isinstance(state, dict) else None
    except Exception:  # truncated, corrupt, foreign: it only loses the explanation
        return None


def rng_state(*generators: torch.Generator) -> dict:
    """The global random states (Python, torch CPU, CUDA if present) and those of ``generators``."""
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, *generators: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved, into the same ``generators`` (in the same order)."""
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)


def global_rng_state() -> dict:
    """This process's global random states alone (Python, torch CPU, CUDA if present): what is drawn per
    sample (dropout), and differs between the processes of a data-parallel run."""
    return {k: v for k, v in rng_state().items() if k != "generators"}


def _take_own_rng(state: dict, rank: int, world: int) -> None:
    """In every capture in ``state`` (a dict with an ``rng`` entry, at any depth), the global random states of
    process ``rank``, from the ``rng_ranks`` saved beside it, in place of rank 0's; the generators (seeded
    alike on every rank: batch order, augmentation, t) stay as saved."""
    ranks = state["rng_ranks"]  # a state without them: StaleState (another code version)
    if len(ranks) != world:
        raise StaleState(f"it holds the random states of {len(ranks)} process(es), this run has {world}")
    own = ranks[rank]

    def visit(d: dict) -> None:
        rng = d.get("rng")
        if isinstance(rng, dict) and "generators" in rng:
            d["rng"] = {"generators": rng["generators"], **own}
        for v in d.values():
            if isinstance(v, dict):
                visit(v)

    visit(state)


def _tuples(x: Any) -> Any:
    """random.setstate wants tuples where a round trip through torch.save may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class ResumeState:
    """The saved state of one training run, in ``folder`` (one folder per run, e.g. per stage and seed).

    ``key`` is the run's fingerprint; ``stop_after`` (default: $MODECONN_STOP_AFTER_EPOCHS) stops the
    process after saving that many epochs, for drills and tests. ``parts``, the components the key was made of
    (``{"settings": …, "inputs": …, "code": …}``, see :func:`what_changed`), is saved with the state, so that a
    later run under another key can say in its warning what changed.
    """

    def __init__(
        self,
        folder: Path | str,
        key: str,
        stop_after: int | None = None,
        runtime: Runtime = CPU,
        parts: dict | None = None,
    ):
        self.folder, self.key, self.runtime, self.parts = Path(folder), key, runtime, parts
        self.path = self.folder / f"{key}.pt"
        if stop_after is None and os.environ.get(STOP_ENV):
            try:
                stop_after = int(os.environ[STOP_ENV])
            except ValueError:
                raise ModeconnError(f"{STOP_ENV}={os.environ[STOP_ENV]!r} must be a whole number of epochs") from None
        self.stop_after = stop_after
        self.done_here = 0  # epochs finished by this process
        self.resumed_after = 0  # the epoch a loaded state had reached (0: started from scratch)

    def _clean_others(self) -> None:
        """Delete the states of this run's folder saved under other keys, each with one warning naming what
        changed (from the ``parts`` recorded in it)."""
        for other in self.folder.glob("*.pt"):
            if other != self.path:
                why = what_changed(saved_parts(other), self.parts) if self.parts is not None else "another key"
                then = "removing it" if self.path.is_file() else "starting from scratch"
                log.warning("resume state %s was saved under %s; %s", other, why, then)
                other.unlink(missing_ok=True)

    def load(self) -> dict | None:
        """The state of the last finished epoch, or None (nothing saved, or a file not to be trusted).

        In a data-parallel run, rank 0 reads it and every process gets rank 0's answer (the file need not be
        on a file system the other machines see), with its own global random states in place of rank 0's in
        every capture (see :meth:`epoch_done`): :func:`restore` then puts each process back on its own
        dropout stream."""
        state = self.runtime.broadcast(self._read() if self.runtime.is_main else None)
        if state is not None and self.runtime.world_size > 1:
            _take_own_rng(state, self.runtime.rank, self.runtime.world_size)
        self.resumed_after = int(state["epoch"]) if state is not None else 0
        return state

    def _read(self) -> dict | None:
        if not self.folder.is_dir():
            return None
        self._clean_others()
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("key") != self.key:
                raise ValueError("not a resume state of this run")
            int(state["epoch"])
        except Exception as exc:  # truncated, corrupt, another version: never trusted
            log.warning(
                "ignoring resume state %s (%s: %s); starting from scratch",
                self.path,
                type(exc).__name__,
                str(exc).splitlines()[0][:100] if str(exc) else "",
            )
            self.path.unlink(missing_ok=True)
            return None
        log.info("resuming from %s: %d epoch(s) already done", self.path, state["epoch"])
        _loaded[:] = [self.path]
        # The state and the captures in it (see capture) answer a missing key with StaleState.
        return _Saved({k: _Saved(v) if type(v) is dict and "module" in v else v for k, v in state.items()})

    def epoch_done(self, epoch: int, state: dict) -> None:
        """Save the state at the end of ``epoch`` (atomically, rank 0 only); then stop if asked to.

        Every process calls it: it gathers each one's own global random states (:func:`global_rng_state`; in a
        data-parallel run each rank draws its own dropout masks, runtime.seed_everything) and rank 0 saves
        them all, as ``rng_ranks``, beside ``state``."""
        ranks = self.runtime.all_gather(global_rng_state())  # a collective: before rank 0's own work
        if self.runtime.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            saved = {"format": FORMAT, "key": self.key, "parts": self.parts, "epoch": epoch, **state}
            saved["rng_ranks"] = ranks
            atomic_torch_save(saved, self.path)
        self.done_here += 1
        if self.stop_after is not None and self.done_here >= self.stop_after:
            self.runtime.barrier()  # every rank stops at once, after rank 0 has saved: none is killed mid-save
            raise Preempted(
                f"stopped after {self.done_here} epoch(s) (epoch {epoch}) as {STOP_ENV} asks; the state "
                f"is in {self.path}: rerun the same command to continue"
            )

    def clear(self) -> None:
        """The run has finished: remove its state (and the folder, if nothing else is in it)."""
        if not self.runtime.is_main:
            return
        self.path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def capture(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, *generators: torch.Generator
) -> dict:
    """What a training run needs to continue: weights and buffers, optimizer state, iteration, random states."""
    return {
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "rng": rng_state(*generators),
    }


def restore(
    state: dict, module: torch.nn.Module, optimizer: torch.optim.Optimizer, *generators: torch.Generator
) -> int:
    """Load what :func:`capture` saved into the same objects; returns the iteration to continue from.

    A state that does not fit them (missing keys, weights or momentum buffers of other shapes, another number
    of generators) is a :class:`StaleState`."""
    try:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])  # checks the groups' sizes, not the buffers' shapes
        for group in optimizer.param_groups:
            for p in group["params"]:
                for name, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                        raise StaleState(
                            f"optimizer {name} of shape {tuple(value.shape)} for a parameter of {tuple(p.shape)}"
                        )
        set_rng_state(state["rng"], *generators)
        return int(state["iteration"])
    except StaleState:
        raise
    except Exception as exc:  # load_state_dict's RuntimeError, a KeyError or TypeError of another layout
        raise StaleState(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:150]}") from None
