//! The partition the drill cuts itself: every non-loopback link of a real network
//! namespace goes down, and restoring brings back exactly those links and the routes
//! that going down removed — from `restore()` and, when nobody called it, from `Drop`.
//! Needs root and iproute2 (the README's test command runs as root and installs it).
#![allow(clippy::unwrap_used)]

use lifeboat_core::RegionId;
use lifeboat_drill::Scenario;
use lifeboat_drill::fault::{CmdEnv, Injected, Injection};
use std::process::Command;

struct Ns {
    name: String,
}

impl Ns {
    /// A namespace with an up veth pair (d0, d1), an address on d0 and a route through it.
    fn create(tag: &str) -> Ns {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "creating network namespaces needs root: run the README's test command as root (CI does)"
        );
        let name = format!("lbdrill-{tag}-{}", std::process::id());
        let ns = Ns { name };
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        match Command::new("ip").args(["netns", "add", &ns.name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("ip netns add: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!(
                "no `ip` command ({e}): run the README's test command (it installs iproute2)"
            ),
        }
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        ns.ip(&["link", "set", "d1", "up"]);
        ns.ip(&["addr", "add", "198.19.7.1/24", "dev", "d0"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "set", "d0", "up"]);
        ns.ip(&["route", "add", "198.20.7.0/24", "via", "198.19.7.2"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn d0_up(&self) -> bool {
        let line = self.ip(&["-o", "link", "show", "d0"]);
        let flags = line.split('<').nth(1).unwrap().split('>').next().unwrap();
        flags.split(',').any(|f| f == "UP")
    }

    fn has_route(&self) -> bool {
        self.ip(&["route", "show"])
            .contains("198.20.7.0/24 via 198.19.7.2")
    }

    fn env(&self) -> CmdEnv {
        CmdEnv {
            region: RegionId::new("a"),
            scenario: Scenario::Partition,
            run: 1,
            controller: String::new(),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[tokio::test]
async fn a_partition_cuts_the_namespace_and_restore_heals_it() {
    let ns = Ns::create("cut");
    assert!(ns.d0_up() && ns.has_route());
    let (mut guard, injected) =
        Injected::inject(&Injection::Netns(ns.name.clone()), ns.env()).await;
    injected.unwrap();
    assert!(!ns.d0_up(), "the link is still up during the partition");
    assert!(!ns.has_route(), "a down link keeps no route");
    guard.restore().await.unwrap();
    assert!(ns.d0_up(), "the link did not come back");
    assert!(
        ns.has_route(),
        "the route through the link did not come back"
    );
    // Loopback was never touched.
    assert!(ns.ip(&["-o", "link", "show", "lo"]).contains(",UP"));
}

#[tokio::test]
async fn a_dropped_guard_heals_the_partition_too() {
    let ns = Ns::create("drop");
    let (guard, injected) = Injected::inject(&Injection::Netns(ns.name.clone()), ns.env()).await;
    injected.unwrap();
    assert!(!ns.d0_up());
    drop(guard);
    assert!(ns.d0_up() && ns.has_route());
}

#[tokio::test]
async fn a_missing_namespace_is_an_error_and_leaves_nothing_to_undo() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run the README's test command as root (CI does)"
    );
    let env = CmdEnv {
        region: RegionId::new("a"),
        scenario: Scenario::Partition,
        run: 1,
        controller: String::new(),
    };
    let (mut guard, injected) =
        Injected::inject(&Injection::Netns("lbdrill-no-such-ns".into()), env).await;
    let e = injected.expect_err("no such namespace");
    assert!(format!("{e:#}").contains("lbdrill-no-such-ns"), "{e:#}");
    guard.restore().await.unwrap();
}
