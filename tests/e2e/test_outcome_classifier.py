"""A reward classifier the learner published ends a robot's episodes: the real cloud and ``fleetloop edge
--outcome-from`` on a simulated robot with a camera (gym-pusht's 96x96 pixels), the classifier's versions pushed down
the tunnel beside the policy's. v1 always says success (its last layer's bias set so), v2 never does."""

from __future__ import annotations

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeRecord, EpisodeStore
from policies.weights import policy_to_bytes
from tests.e2e.fleet import Fleet, publish_untrained_policy, wait_until
from tests.policies.reward_frames import constant_classifier

DATASET, CLASSIFIER, TICKS = "pusht", "pusht.reward", 5


def classifier_bytes(success: bool) -> bytes:
    return policy_to_bytes(constant_classifier(success, ("pixels",), side=96))


def test_the_reward_classifier_ends_episodes_while_it_says_success_and_not_after(fleet: Fleet) -> None:
    registry = signing_registry(DataLayout(fleet.root / "data"))
    publish_untrained_policy(fleet.root, DATASET, hidden=(16,))  # actions for a robot with no operator
    registry.publish(CLASSIFIER, classifier_bytes(True))
    fleet.start_cloud()
    flags = ("--operator", "none", "--no-takeover", "--outcome-from", CLASSIFIER, "--outcome-ticks", str(TICKS))
    fleet.start_edge("cart-1", *flags, robot="sim:pusht", hz=50)
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def episodes() -> list[EpisodeRecord]:
        store.refresh()
        return store.episodes(DATASET) if DATASET in store.datasets() else []

    def judged() -> list[EpisodeRecord]:
        return [e for e in episodes() if e.labelled_by.startswith("reward-classifier")]

    wait_until(lambda: len(judged()) >= 3, 60, f"three episodes ended by the classifier: {fleet.log('cart-1')}")
    for episode in judged():
        assert (episode.label, episode.labelled_by) == ("success", f"reward-classifier {CLASSIFIER} v1")
        assert episode.done and episode.success
        assert episode.num_steps >= TICKS, "it ended before the classifier said success for N frames in a row"

    registry.publish(CLASSIFIER, classifier_bytes(False))  # v2: never success
    swapped = f"cart-1 judges success with reward classifier {CLASSIFIER} v2"
    wait_until(lambda: swapped in fleet.log("cart-1"), 30, "v2 swapped in on the edge")
    ended_by_v1, steps = len(judged()), sum(e.num_steps for e in episodes())
    # v1 ended an episode every few steps; with v2 the robot runs on for 120 steps and none ends by the classifier.
    wait_until(lambda: sum(e.num_steps for e in episodes()) >= steps + 120, 30, "120 more steps stored")
    after = judged()
    # Episodes v1 ended before the swap may still be on their way up (a loaded machine's upload backlog held three);
    # none is ever ended by v2, which never says success.
    assert len(after) <= ended_by_v1 + 4, "episodes still ended by the classifier after v2"
    assert all(e.labelled_by.endswith(" v1") for e in after), [e.labelled_by for e in after]

    edge_log, cloud_log = fleet.log("cart-1"), fleet.log("cloud")
    assert f"cart-1 judges success with reward classifier {CLASSIFIER} v1" in edge_log
    assert f"cart-1 judges success with {CLASSIFIER} v2" in cloud_log  # reported applied, as its classifier
    assert f"cart-1 now runs {DATASET} v1" in cloud_log
    assert f"received reward classifier {CLASSIFIER} v2" in edge_log
    assert f"policy {CLASSIFIER}" not in edge_log  # never received, loaded or run as the robot's policy
    assert "Traceback" not in edge_log
