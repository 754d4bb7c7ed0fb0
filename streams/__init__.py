"""Stream processing (Faust workers): the only writer of online state. See ARCHITECTURE in the README."""
