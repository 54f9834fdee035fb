"""The running daemon: composition with ordered start/stop, reloader, audit trail, control
socket, systemd notification."""
