"""Recording: sources, segmenter, ring buffer, fan-out, export, snapshots."""
