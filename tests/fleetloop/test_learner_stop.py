"""`fleetloop cloud` ends its learner after a stop even when the learner is mid-round and keeps going."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time

from fleetloop.commands import cloud

# A learner in a long round: a SIGTERM only sets its stop flag, as the learner's handler does. (Given as source to
# exec: the spawned child imports no test module.)
BUSY_LEARNER = "import signal, time; signal.signal(signal.SIGTERM, lambda *_: None); time.sleep(60)"


def test_a_learner_still_training_after_the_stop_is_ended(monkeypatch, caplog) -> None:
    monkeypatch.setattr(cloud, "LEARNER_STOP_S", 0.5)
    learner = multiprocessing.get_context("spawn").Process(target=exec, args=(BUSY_LEARNER,), daemon=True)
    learner.start()
    time.sleep(1.0)  # its handler is in place
    with caplog.at_level(logging.WARNING, logger="fleetloop"):
        cloud._stop_learner(learner)
    assert not learner.is_alive() and learner.exitcode == -signal.SIGKILL
    assert "still training" in caplog.text and "not published" in caplog.text


def test_a_learner_that_stops_is_not_killed(caplog) -> None:
    learner = multiprocessing.get_context("spawn").Process(
        target=time.sleep, args=(60,), daemon=True
    )  # SIGTERM ends it
    learner.start()
    time.sleep(1.0)
    with caplog.at_level(logging.WARNING, logger="fleetloop"):
        cloud._stop_learner(learner)
    assert learner.exitcode == -signal.SIGTERM and "still training" not in caplog.text
