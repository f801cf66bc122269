"""The node side of streaming pipelines: replicas on dedicated worker processes, the routing
of items between stages (credits, joins, batches), and the driver's coordinator."""
