"""Expression work under time, memory and size bounds."""
