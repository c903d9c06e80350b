"""RQ jobs and worker processes: persist deliveries, submit tasks, reconcile."""
