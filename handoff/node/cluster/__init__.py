"""The node in the cluster: membership (pure) and peers (links, hellos, gossip I/O)."""
