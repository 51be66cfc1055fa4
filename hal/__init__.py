"""The hardware abstraction layer: devices as resources, and drivers over them.

- ``config``         the base of typed configs (pydantic) and errors that name the bad key's path
- ``resource``       what a device is and can do (capabilities, specs) and the ``Driver`` interface
- ``drivers``        drivers by name (``sim:``, ``ros2:``, ``lerobot:``) and the safety wrapper every one gets
- ``safety``         limits, watchdog and emergency stop around any driver
- ``sim``            gymnasium simulators (gym_hil's Panda, gym_pusht); ``reach_sim`` a small RL task
- ``ros2``           a robot that speaks ROS 2 topics; ``ros2_config`` its YAML config; ``ros2_sim_node`` a
                     simulator (or a JointTrajectory-commanded arm) behind such topics
- ``lerobot_robot``  any lerobot ``Robot`` by config, built by lerobot's factory; ``lerobot_config`` checks such a
                     config against lerobot's own config classes; ``lerobot_fake`` a hardware-free lerobot arm
- ``null``           a driver with no device, for tests and benchmarks
- ``lerobot_teleop``  any lerobot teleoperator by config; ``urdf`` a URDF checked before a kinematics library opens it
- ``log_filters``     other packages' lines that would mislead an operator, dropped

May import ``protocol`` only.
"""
