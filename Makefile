# syncwarden: install from a checkout, tests, packages.
PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR = $(PREFIX)/lib/syncwarden
BINDIR = $(PREFIX)/bin
UNITDIR ?= /etc/systemd/system
CONFDIR = /etc/syncwarden
PYTHON ?= /usr/bin/python3
# The package and its sub-packages (the README's code map says what each holds).
PKGDIRS = supervisor $(patsubst %/__init__.py,%,$(wildcard supervisor/*/__init__.py))

.PHONY: install uninstall test unit-test system-test demo

# Installs the package privately (Debian's `supervisor` package owns that module name) with a
# launcher, the units (pointing at that launcher) and the example config unless one exists.
# Needs no network: Debian's python3-transitions, -pystemd, -sdnotify, -systemd and -yaml are the deps.
install:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	for d in $(PKGDIRS); do install -d $(DESTDIR)$(LIBDIR)/$$d && install -m 644 $$d/*.py $(DESTDIR)$(LIBDIR)/$$d/; done
	# Byte-compiled here, as the packages do at install time: neither the daemon (ProtectSystem=)
	# nor the workers (user cyrus) may write __pycache__, and compiling every module at each
	# worker start would delay every resume and drain pass.
	$(PYTHON) -m compileall -q $(if $(DESTDIR),-s $(DESTDIR) -p /) $(DESTDIR)$(LIBDIR)
	printf '#!$(PYTHON)\nimport sys\nsys.path.insert(0, "$(LIBDIR)")\nfrom supervisor.commands import main\nsys.exit(main())\n' > $(DESTDIR)$(BINDIR)/syncwarden
	chmod 755 $(DESTDIR)$(BINDIR)/syncwarden
	for u in units/*.service units/*.timer; do \
	  sed 's|/usr/bin/syncwarden|$(BINDIR)/syncwarden|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); done
	[ -e $(DESTDIR)$(CONFDIR)/syncwarden.yaml ] || install -m 644 config/syncwarden.yaml $(DESTDIR)$(CONFDIR)/syncwarden.yaml
	install -D -m 755 config/routing-map-hook $(DESTDIR)$(PREFIX)/share/syncwarden/hooks/routing-map-hook
	-[ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && systemctl daemon-reload

uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR)/syncwarden
	rm -f $(DESTDIR)$(UNITDIR)/syncwarden.service $(DESTDIR)$(UNITDIR)/syncwarden@.service $(DESTDIR)$(UNITDIR)/syncwarden-sync@.service
	rm -f $(DESTDIR)$(UNITDIR)/syncwarden-check@.service $(DESTDIR)$(UNITDIR)/syncwarden-check@.timer
	rm -f $(DESTDIR)$(UNITDIR)/syncwarden-drain@.service $(DESTDIR)$(UNITDIR)/syncwarden-user@.service

test:
	./scripts/test

unit-test:
	$(PYTHON) -m pytest -q tests/unit

system-test:
	$(PYTHON) -m pytest -q tests/system

demo:
	./scripts/demo

# Packages, each built from a copy of the sources under $(BUILDDIR) and checked with lintian /
# rpmlint (packaging/build; the build tools are listed in packaging/README.md):
#   $(BUILDDIR)/deb/syncwarden_<version>_all.deb
#   $(BUILDDIR)/rpm/RPMS/noarch/syncwarden-<version>-1.noarch.rpm
BUILDDIR ?= build
.PHONY: deb rpm packages

deb:
	packaging/build deb $(BUILDDIR)

rpm:
	packaging/build rpm $(BUILDDIR)

packages: deb rpm
