"""mimray's side of a Ray cluster: Ray jobs (`jobs.py`, `mimray submit` and `mimray jobs`)
and the node hooks the cluster definitions in the repository's `cluster/` start
(`spot_watch.py` on launcher nodes, `pod_drain.py` as KubeRay pods' preStop)."""
