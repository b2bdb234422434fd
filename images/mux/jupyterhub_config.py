"""The mux's JupyterHub config: everything lives in campfleet.mux.hubconfig (one code path
for AWS and `campfleet local`). Organizers may add lines below, e.g. another authenticator:
`c.JupyterHub.authenticator_class = "github"`.
"""

import os

from campfleet.mux.hubconfig import configure

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c, os.environ.get("CAMPFLEET_MUX_SETTINGS", "/etc/campfleet/mux.json"))
