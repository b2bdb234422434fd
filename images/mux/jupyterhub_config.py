"""The mux's JupyterHub config: everything lives in campfleet.mux.hubconfig (one code path
for AWS and `campfleet local`). Organizers may add lines below, e.g. another authenticator:
`c.JupyterHub.authenticator_class = "github"`.
"""

from campfleet.contracts.paths import mux_settings_path
from campfleet.mux.hubconfig import configure

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c, mux_settings_path())
