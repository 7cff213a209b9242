"""Routing policies: the language admins write (``language``) and its compiler (``compiler``)."""
