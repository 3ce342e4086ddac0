"""Mesh, logical-axis sharding rules, TPU topologies, ahead-of-time compilation, hardware probes, host memory."""
