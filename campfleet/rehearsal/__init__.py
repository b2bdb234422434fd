"""`campfleet rehearse`: the rendered user data boots on this machine against a local AWS."""
