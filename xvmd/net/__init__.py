"""The thin I/O shell: sockets in, bytes and time handed to the pure core, bytes out.

Nothing here branches on message content; see ``xvmd.core.service`` for the request pipeline.
"""
