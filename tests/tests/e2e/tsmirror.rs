//! tsmirror end to end: a replica kept byte-identical to a real tailsrv's file across kills,
//! refusals and crashes, created only once a server accepted. Ground truth is the test's own
//! copy of what it appended.

use std::path::Path;

use rustix::process::Signal;
use tests::lines::{Lines, Writer};
use tests::*;

#[test]
fn tsmirror_interrupted_many_times_stays_byte_identical() {
    let dir = tempdir();
    let source = dir.path().join("source");
    let replica = dir.path().join("replica");
    let mut lines = Lines::new();
    append(&source, &lines.more(1_000));
    let srv = tailsrv(&source).start();
    let writer = Writer::start(source.clone(), lines);
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mirror_args = strings(&[&srv.addr().to_string(), replica.to_str().unwrap()]);

    for round in 0..10 {
        let before = len(&replica);
        let mirror = tsmirror(&mirror_args).spawn();
        assert!(
            eventually(PATIENCE, || len(&replica) > before + 50_000),
            "round {round}: the replica does not grow"
        );
        if round == 3 {
            // A second mirror of the same file is refused, and changes nothing.
            let (status, _, err) = tsmirror(&mirror_args).spawn().finish();
            assert_eq!(status.code(), Some(3), "{err}");
            assert!(err.contains("locked"), "{err}");
        }
        if round % 2 == 0 {
            mirror.signal(Signal::KILL);
            mirror.finish();
        } else {
            mirror.signal(Signal::TERM);
            let (status, _, err) = mirror.finish();
            assert!(status.success(), "round {round}: {status:?} {err}");
        }
    }
    let lines = writer.finish();
    let _mirror = tsmirror(&mirror_args).spawn();
    assert!(eventually(PATIENCE, || len(&replica) >= lines.data.len() as u64));
    let copy = std::fs::read(&replica).unwrap();
    assert_eq!(copy.len(), lines.data.len());
    assert!(copy == lines.data, "replica differs from the source");
}

#[test]
fn tsmirror_creates_its_file_only_once_a_server_accepted() {
    let dir = tempdir();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    append(&served.join("a.log"), b"x\n");
    // A directory-mode server refuses a single-file request for good: exit 4, no file.
    let dir_srv = tailsrv(&served).start();
    let replica = dir.path().join("replica");
    let rep = replica.to_str().unwrap();
    let (status, _, err) = tsmirror(strings(&[&dir_srv.addr().to_string(), rep]))
        .spawn()
        .finish();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(!replica.exists(), "a refused tsmirror left a file");

    // Nobody listening: it retries, and no file appears meanwhile.
    let dead = loopback(free_port()).to_string();
    let mirror = tsmirror(strings(&[&dead, rep])).spawn();
    mirror.wait_stderr("cannot connect", 2);
    assert!(
        !replica.exists(),
        "an unconnected tsmirror created its file"
    );
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!replica.exists());

    // An empty source that a server accepts: the (empty) replica exists.
    let source = dir.path().join("source");
    append(&source, b"");
    let srv = tailsrv(&source).start();
    let mirror = tsmirror(strings(&[&srv.addr().to_string(), rep])).spawn();
    mirror.wait_stderr("created the replica", 1);
    assert!(replica.exists());
    append(&source, b"hello\n");
    assert!(eventually(PATIENCE, || std::fs::read(&replica).unwrap() == b"hello\n"));
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "{status:?}: {err}");
}

#[test]
fn tsmirror_cuts_a_zero_filled_tail_left_by_a_crash() {
    let dir = tempdir();
    let source = dir.path().join("source");
    let data = random_bytes(300_000, 50);
    append(&source, &data);
    let srv = tailsrv(&source).start();
    let replica = dir.path().join("replica");
    let rep = replica.to_str().unwrap();
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0);
    // What a crash can leave: the size covers blocks never written (zeros), at the end, or
    // before a block that was written.
    let mut zero_tail = data[..100_000].to_vec();
    zero_tail.extend_from_slice(&[0u8; 10_000]);
    let mut zero_hole = data[..200_704].to_vec(); // 49 * 4096
    zero_hole.extend_from_slice(&[0u8; 8192]);
    zero_hole.extend_from_slice(&data[200_704 + 8192..230_000]);
    for (case, start) in [("tail", zero_tail), ("hole", zero_hole)] {
        std::fs::write(&replica, &start).unwrap();
        let mirror = tsmirror(strings(&[&srv.addr().to_string(), rep])).spawn();
        mirror.wait_stderr("zero bytes at the end", 1);
        assert!(
            eventually(PATIENCE, || len(&replica) >= data.len()),
            "{case}"
        );
        mirror.signal(Signal::TERM);
        let (status, _, err) = mirror.finish();
        assert!(status.success(), "{case}: {status:?}: {err}");
        let copy = std::fs::read(&replica).unwrap();
        assert_eq!(copy.len(), data.len(), "{case}: {err}");
        assert!(copy == data, "{case}: the replica differs from the source");
    }
    // A replica without zeros is left alone (nothing cut, nothing said).
    let mirror = tsmirror(strings(&[&srv.addr().to_string(), rep])).spawn();
    mirror.wait_stderr("mirroring from the replica's length", 1);
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("zero bytes"), "{err}");
    assert!(std::fs::read(&replica).unwrap() == data);
}
