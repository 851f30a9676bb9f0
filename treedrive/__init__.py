"""TreeDrive: a peer-to-peer file-sharing node."""
