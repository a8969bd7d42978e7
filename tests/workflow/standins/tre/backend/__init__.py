"""Stand-in package: its stand-in modules shadow the real ones, the rest is the real package."""
from _standin import become_real

become_real(globals())
