//! What every provisioning test starts from: a state store in a temp dir,
//! an org, the named apps, and a vault key beside the store.

use hangar_resources::Vault;
use hangar_store::{App, Store};

pub struct Fixture {
    /// Keeps the temp dir alive as long as the fixture.
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub vault: Vault,
    pub apps: Vec<App>,
}

pub async fn fixture(apps: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let org = store
        .create_org_with_token("acme", "t", "hash")
        .await
        .unwrap();
    let mut made = Vec::new();
    for name in apps {
        made.push(store.get_or_create_app(&org.id, name).await.unwrap());
    }
    let vault = Vault::open(&dir.path().join("secrets.key")).unwrap();
    Fixture {
        dir,
        store,
        vault,
        apps: made,
    }
}
