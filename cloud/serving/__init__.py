"""Policies run in the cloud for others.

- ``inference``  batched remote inference: observations in, action chunks out, for edges and openpi clients
- ``foresight``  how far a policy's predicted trajectory was from what a phone's demonstrator then did

May import ``cloud.data``, ``policies`` and ``protocol``.
"""
