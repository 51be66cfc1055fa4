from __future__ import annotations

import threading

from cloud.data.layout import DataLayout
from cloud.data.learner_key import learner_signer


def test_first_starts_at_once_share_one_whole_key(tmp_path) -> None:
    """torchrun's ranks each open the registry at the first start: none may read the key half-written or keep a key
    of its own."""
    layout = DataLayout(tmp_path)
    keys: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def first_start() -> None:
        start.wait()
        try:
            keys.append(learner_signer(layout).public_pem())
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=first_start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(keys)) == 1
    assert layout.learner_public_key.read_bytes() == keys[0]
    assert layout.learner_key.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in layout.learner_key.parent.iterdir()) == [layout.learner_key.name]
