"""Progress of the long loops (training, teacher cache, evaluation, prediction, data checks): a tqdm
bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns, which a log file (every workflow job writes one)
keeps: one "line" of thousands of overwritten bars. Where the output is not a terminal,
``progress`` prints tqdm's own status text as a new line every ``total / lines`` iterations
(and once at the end) instead: no carriage return, no cursor movement.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm import tqdm

#: status lines a loop of known length prints when the output is not a terminal
LINES_PER_LOOP = 20
#: iterations between two status lines when the loop's length is unknown
UNSIZED_EVERY = 100
#: tqdm's status without the bar (block characters say nothing in a log)
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
UNSIZED_LINE_FORMAT = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class LineProgress(tqdm):
    """tqdm printing its status as one plain line per refresh, never redrawing one."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg != "":  # "" is tqdm's request to clear the bar: nothing to clear in a log
            self.fp.write((self.__str__() if msg is None else msg) + "\n")
            self.fp.flush()
        return True

    def set_postfix(self, ordered_dict=None, refresh: bool = False, **kwargs) -> None:
        """The postfix shows on the next line, instead of a line of its own."""
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: earlier lines stay (tqdm.write prints between them)."""

    def moveto(self, n: int) -> None:
        """No cursor movement in a log."""

    def close(self) -> None:
        if self.disable:
            return
        if self.n != self.last_print_n:  # the final count, unless just printed
            self.display()
        self.disable = True
        self._decr_instances(self)


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
             unit: str = "it", initial: float = 0, disable: bool = False, file: Any = None) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``) on ``file`` (default
    stderr): the usual bar on a terminal, else a ``LineProgress`` printing about LINES_PER_LOOP
    lines per loop (every UNSIZED_EVERY iterations without a length)."""
    file = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    options = {"total": total, "desc": desc, "unit": unit, "initial": initial, "disable": disable, "file": file}
    if getattr(file, "isatty", lambda: False)():
        return tqdm(iterable, dynamic_ncols=True, **options)
    every = max(1, round((total - initial) / LINES_PER_LOOP)) if total else UNSIZED_EVERY
    # miniters without mininterval: a line every `every` iterations, whatever their rate; an
    # infinite maxinterval keeps tqdm's monitor thread from lowering miniters to 1
    return LineProgress(iterable, miniters=every, mininterval=0, maxinterval=float("inf"),
                        bar_format=LINE_FORMAT if total else UNSIZED_LINE_FORMAT, **options)
