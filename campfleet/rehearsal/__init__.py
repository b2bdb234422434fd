"""`campfleet rehearse`: the rendered user data boots on this machine (docs/rehearsal.md)."""
