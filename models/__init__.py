"""Side-effect-free code shared by training, the stream workers and the server."""
