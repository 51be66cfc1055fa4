"""Which scenario of ``test_readme_commands`` runs each README command line (or why none does)."""

from __future__ import annotations

# README command -> scenario. "not run here" names why a line is not run by this file.
COVERED: dict[str, str] = {
    "make demo": "not run here: the whole demo, run by hand before a landing (README gives its figures)",
    "make test": "not run here: this suite is what it runs",
    "fleetloop cloud --root fleetloop-data --port 7070": "loop",
    "fleetloop edge --robot sim:panda_pick_cube --id robot-1 --cloud 127.0.0.1:7070 --seed 1": "loop",
    "fleetloop edge --robot sim:pusht --id pusht-1 --operator none": "loop",
    "fleetloop fleet --watch": "loop",
    "fleetloop fleet pause robot-1": "loop",
    "fleetloop cloud --root fleetloop-data --port 7070 --no-learner": "learner",
    "fleetloop learner --root fleetloop-data": "learner",
    "FASTDDS_DEFAULT_PROFILES_FILE=launch/ros2/fastdds_shm.xml python -m hal.ros2_sim_node --domain-id 7 &": "robots",
    "ROS_DOMAIN_ID=7 fleetloop edge --robot ros2:launch/ros2/panda_sim.yaml --id ros-arm-1": "robots",
    "FASTDDS_DEFAULT_PROFILES_FILE=launch/ros2/fastdds_shm.xml python -m hal.ros2_sim_node --domain-id 7 "
    "--command joint_trajectory --namespace /arm &": "robots",
    "ROS_DOMAIN_ID=7 fleetloop edge --robot ros2:launch/ros2/panda_joint_trajectory.yaml --id joint-arm-1": "robots",
    "fleetloop edge --robot lerobot:launch/lerobot/fake_arm.yaml --id arm-1 --operator none": "robots",
    "fleetloop edge --robot lerobot:launch/lerobot/so101_follower.yaml --id arm1": "robots",
    "fleetloop edge --robot sim:panda_pick_cube --id robot-3 --operator keyboard": "keyboard",
    "fleetloop certs init --root fleetloop-data --host cloud.lab.example": "credentials",
    "fleetloop devices add robot-1 --root fleetloop-data --policy panda_pick_cube": "credentials",
    "fleetloop devices add alice --kind operator --root fleetloop-data": "credentials",
    "fleetloop devices add cart-1 --embodiment pusht --source sim": "credentials",
    "fleetloop cloud --root fleetloop-data --host 0.0.0.0 --tls": "credentials",
    "FLEETLOOP_TOKEN=flt_... fleetloop edge --robot sim:panda_pick_cube --id robot-1 --cloud cloud.lab.example:7070 "
    "--ca ca.pem": "credentials",
    "FLEETLOOP_TOKEN=<alice's token> fleetloop fleet --cloud cloud.lab.example:7070 --ca ca.pem": "credentials",
    "fleetloop devices list": "credentials",
    "fleetloop devices revoke robot-1": "credentials",
    "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=us-east-1": "not run here: "
    "tests/e2e/test_store_s3.py sets these for moto's S3 server on loopback",
    "export AWS_ENDPOINT_URL=http://minio.lab.example:9000 AWS_ALLOW_HTTP=true": "not run here: "
    "tests/e2e/test_store_s3.py points them at moto's S3 server on loopback",
    "fleetloop cloud --root fleetloop-data --store s3://fleet-bucket/lab1 --no-learner": "not run here: "
    "tests/e2e/test_store_s3.py runs it on a bucket of moto's S3 server",
    "fleetloop learner --root fleetloop-data --store s3://fleet-bucket/lab1": "not run here: "
    "tests/e2e/test_store_s3.py runs it on a bucket of moto's S3 server",
    "fleetloop export --root fleetloop-data --store s3://fleet-bucket/lab1 --dataset panda_pick_cube "
    "--out pick-export": "not run here: tests/fleetloop/test_store_flag.py runs export and policy with --store on a "
    "bucket of moto's S3 server",
    "fleetloop cloud --root fleetloop-data --store s3://fleet-bucket/lab1 --gateway-id gw-a --port 7070": "not run "
    "here: tests/e2e/test_gateways.py runs two gateways with --gateway-id on a bucket of moto's S3 server",
    "fleetloop cloud --root fleetloop-data --store s3://fleet-bucket/lab1 --gateway-id gw-b --port 7070 --no-learner": (
        "not run here: tests/e2e/test_gateways.py runs two gateways with --gateway-id on a bucket of moto's S3 server"
    ),
    "fleetloop cloud --phone-port 7071 --phone-image 224x224": "phones",
    "fleetloop certs init --host 192.168.1.20": "phones on a LAN",
    "fleetloop devices add robot-1 --policy panda_pick_cube": "phones on a LAN",
    "fleetloop cloud --tls --host 0.0.0.0 --phone-port 7071": "phones on a LAN",
    "fleetloop devices add alice --kind operator": "takeover",
    "fleetloop cloud --phone-port 7071": "takeover",
    "FLEETLOOP_TOKEN=flt_... fleetloop edge --robot sim:panda_pick_cube --id robot-1 --operator none": "takeover",
    "fleetloop edge --robot sim:pusht --id cart-1 --remote-policy": "policies",
    "fleetloop edge --robot sim:pusht --id cart-1 --preload lerobot": "policies",
    "fleetloop cloud --wire-dtype bfloat16": "policies",
    "fleetloop cloud --canary 0.25 --canary-episodes 10": "not run here: tests/e2e/test_canary.py runs a cloud with "
    "--canary 0.25 over four robots, a worse version rolled back and a better one promoted",
    "fleetloop fleet promote panda_pick_cube 7": "not run here: tests/e2e/test_canary.py promotes a canary by hand",
    "fleetloop fleet rollback panda_pick_cube 7": "not run here: tests/e2e/test_canary.py rolls back a canary by hand",
    "fleetloop edge --robot sim:pusht --id cart-1 --uplink-codec auto": "not run here: tests/e2e/test_uplink_codec.py "
    "runs a pusht edge's cameras up raw and as H.264 into a cloud whose store keeps them as H.264",
    "fleetloop edge --robot sim:pusht --id cart-1 --uplink-codec jpeg": "not run here: JPEG frames into a real gateway "
    "and store are tests/cloud/test_gateway_video_ingest.py's",
    "fleetloop cloud --store-codec av1": "not run here: what each --store-codec keeps is "
    "tests/cloud/test_gateway_cameras.py's",
    "fleetloop policy list panda_pick_cube": "policies",
    "fleetloop policy rollback panda_pick_cube --to 3": "policies",
    "fleetloop export --root fleetloop-data --dataset panda_pick_cube --out panda-lerobot": "policies",
    "fleetloop import --root fleetloop-data --from panda-lerobot": "policies",
    'echo \'{"chunk_size": 10, "n_action_steps": 10, "dim_model": 64, "dim_feedforward": 128}\' > act.json': (
        "learners"
    ),
    "fleetloop learner --algorithm sac --demo-ratio 0.5": "learners",
    "fleetloop learner --policy panda_pick_cube=act --policy-config panda_pick_cube=act.json "
    "--train-steps 200": "learners",
    "fleetloop learner --algorithm sac --sample-ratios online=0.5,intervention+demo=0.5 --staleness-budget 4 "
    "--staleness-mode downweight": "learners",
    "torchrun --nproc_per_node=2 -m fleetloop.distributed_learner --backend gloo": "learners",
    "tensorboard --logdir fleetloop-data/runs": "not run here (a web server): test_learner_alone reads the event "
    "files it would show, tests/cloud/test_learning_curves.py checks every tag",
    "fleetloop learner --root fleetloop-data --track wandb": "learners",
    "wandb sync fleetloop-data/runs/panda_pick_cube/wandb/offline-run-*": "not run here: it uploads to W&B over "
    "the network; test_learner_commands checks the offline run it would upload",
    "fleetloop learner --root fleetloop-data --track trackio": "not run here: tests/cloud/test_learning_curves.py "
    "writes and reads back a trackio database in the data folder",
    "TRACKIO_DIR=fleetloop-data/runs/trackio trackio show --project fleetloop": "not run here: a web server over the "
    "database tests/cloud/test_learning_curves.py reads",
    "cp launch/lerobot/so101_follower.yaml arm1.yaml": "first session",
    "cp launch/teleop/so101_leader.yaml leader.yaml": "first session",
    "fleetloop devices add arm1 --root fleetloop-data --policy so101_follower --policy so101_follower.reward": (
        "first session"
    ),
    "fleetloop devices add bob --kind operator --root fleetloop-data --policy so101_follower": "first session",
    "fleetloop cloud --root fleetloop-data --host 0.0.0.0 --tls --phone-port 7071 --reward-classifier "
    "so101_follower": "first session",
    "FLEETLOOP_TOKEN=flt_... fleetloop edge --robot lerobot:arm1.yaml --id arm1 --cloud cloud.lab.example:7070 "
    "--ca ca.pem --operator teleop:leader.yaml": "first session",
    "fleetloop policy list so101_follower --root fleetloop-data": "first session",
    "fleetloop policy publish panda_pick_cube --root fleetloop-data --robot sim:panda_pick_cube "
    "--from outputs/train/act_panda/checkpoints/last/pretrained_model": "a lab's policy",
    "fleetloop policy publish pusht --root fleetloop-data --robot sim:pusht "
    "--from outputs/train/act_panda/checkpoints/last/pretrained_model": "a lab's policy",
    "fleetloop learner --root fleetloop-data --init panda_pick_cube=registry --train-steps 200": "a lab's policy",
    "fleetloop learner --root fleetloop-data --train-steps 200 "
    "--init panda_pick_cube=outputs/train/act_panda/checkpoints/last/pretrained_model": "a lab's policy",
}
