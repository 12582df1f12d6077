"""mgd.progress: a tqdm bar on a terminal, plain lines (no carriage return) in a log."""

from __future__ import annotations

import io

from mgd.progress import LINES_PER_LOOP, LineProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_every_few_iterations():
    log = io.StringIO()
    for _ in progress(range(200), desc="evaluate", unit="img", file=log):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= LINES_PER_LOOP + 2
    assert all(line.startswith("evaluate: ") for line in lines)
    assert "200/200" in lines[-1] and "img/s" in lines[-1]


def test_a_hand_updated_loop_shows_its_postfix_and_its_final_count():
    log = io.StringIO()
    bar = progress(total=50, initial=10, desc="sup resnet18d", file=log)
    assert isinstance(bar, LineProgress)
    for step in range(37):
        bar.update(1)
        if step == 20:
            bar.set_postfix(loss="0.5000")  # no line of its own
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) <= LINES_PER_LOOP + 2
    assert "47/50" in lines[-1] and "loss=0.5000" in lines[-1]
    assert sum("loss=" in line for line in lines) < len(lines)


def test_a_loop_of_unknown_length_and_a_disabled_one():
    log = io.StringIO()
    for _ in progress(iter(range(250)), desc="views", file=log):
        pass
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "views: 0", "views: 100", "views: 200", "views: 250"]
    quiet = io.StringIO()
    for _ in progress(range(5), desc="x", disable=True, file=quiet):
        pass
    assert quiet.getvalue() == ""


def test_a_terminal_keeps_the_redrawn_bar():
    terminal = Terminal()
    for _ in progress(range(5), desc="evaluate", file=terminal):
        pass
    assert "\r" in terminal.getvalue()
