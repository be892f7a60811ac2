"""Work in a forked child (scoring tokenizes its captions there): the same result or error as in this process.

Each case runs in a fresh interpreter: the test process itself may have threads (torch's, pytest's), and then
:func:`captionkit.evaluation.forked.start` rightly declines to fork.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from _data import SHARED_DATA
from captionkit.evaluation import forked

COCO_SUBSET = SHARED_DATA / "coco" / "captions_val2017_subset.json"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_work_runs_in_a_child_and_its_result_comes_back_whole() -> None:
    out = run_python(
        """
        import os
        from captionkit.evaluation import forked
        assert forked.can_fork()
        parent = os.getpid()
        done = forked.start(lambda: (os.getpid(), ["a dog", "x" * 200_000, "\\u00e9\\u00a0"]))
        pid, value = done()
        assert pid != parent and value == ["a dog", "x" * 200_000, "\\u00e9\\u00a0"], (pid, parent)
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            print("reaped")
        """
    )
    assert out == "reaped"


def test_a_result_never_asked_for_still_has_its_child_reaped() -> None:
    out = run_python(
        """
        import os, time
        from captionkit.evaluation import forked
        pending = forked.start(lambda: time.sleep(0.2) or "unused")
        del pending  # the caller failed before it asked
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            print("reaped")
        """
    )
    assert out == "reaped"


def test_a_failing_child_leaves_the_work_and_its_error_to_this_process() -> None:
    out = run_python(
        """
        import os
        from captionkit.evaluation import forked
        parent = os.getpid()
        def work():
            if os.getpid() != parent:
                raise RuntimeError("only in the child")
            return "done here"
        assert forked.start(work)() == "done here"
        def broken():
            raise ValueError(f"bad input in {'child' if os.getpid() != parent else 'parent'}")
        try:
            forked.start(broken)()
        except ValueError as error:
            print(error)
        """
    )
    assert out == "bad input in parent"


def test_a_process_that_ignores_its_children_still_gets_the_result() -> None:
    # With SIGCHLD ignored the kernel reaps children itself, and waiting for one finds none.
    out = run_python(
        """
        import os, signal
        from captionkit.evaluation import forked
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        parent = os.getpid()
        print(forked.start(lambda: os.getpid() != parent)())
        """
    )
    assert out == "True"


def test_a_process_with_threads_does_not_fork() -> None:
    out = run_python(
        """
        import os, threading
        from captionkit.evaluation import forked
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            print(forked.can_fork(), forked.start(os.getpid)() == os.getpid())
        finally:
            stop.set()
        """
    )
    assert out == "False True"


def test_without_fork_the_work_runs_when_its_result_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    calls: list[int] = []
    done = forked.start(lambda: calls.append(1) or "value")
    assert calls == [] and done() == "value" and calls == [1]


def test_scoring_in_children_gives_the_same_scores() -> None:
    # Captions tokenized in a child against everything in this process.
    out = run_python(
        f"""
        from captionkit.evaluation import api, forked
        from captionkit.evaluation.readers import read_references
        references = read_references({str(COCO_SUBSET)!r}).captions
        refs = {{image: captions[1:] for image, captions in references.items()}}
        cands = {{image: captions[0] for image, captions in references.items()}}
        forks = []
        start = forked.start
        forked.start = lambda work: forks.append(forked.can_fork()) or start(work)
        api.FORK_MIN_REFERENCES = 1
        beside = api.score_captions(refs, cands, "BLEU,ROUGE_L,CIDEr")
        api.FORK_MIN_REFERENCES = 10**9
        here = api.score_captions(refs, cands, "BLEU,ROUGE_L,CIDEr")
        print(forks, beside.scores == here.scores and beside.per_image == here.per_image)
        """
    )
    assert out == "[True] True"
