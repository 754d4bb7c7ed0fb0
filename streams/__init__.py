"""Stream processing: the workers that consume the topics and are the only writers of the online state."""
