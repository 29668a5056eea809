//! `hangar domains …`: an app's custom domains.

use anyhow::Result;
use hangar_api_types::hangar::{AddDomain, Domain, DomainList};
use http::Method;

use crate::commands::api;

/// `hangar domains add APP HOST`: prints the DNS record to create.
pub async fn add(app: &str, host: &str) -> Result<()> {
    let body = AddDomain {
        host: host.to_owned(),
    };
    let d: Domain = api()?
        .send_json_as(Method::POST, &format!("/api/v1/apps/{app}/domains"), &body)
        .await?;
    println!("Added {} to {} ({})", d.host, d.app, d.status);
    println!("Create this DNS record at your DNS provider:\n");
    for r in &d.dns {
        println!("    {:<6} {}  ->  {}", r.kind, r.name, r.value);
    }
    println!("\nHTTPS certificates for custom domains are not issued yet: it is served over HTTP.");
    Ok(())
}

/// `hangar domains list APP`.
pub async fn list(app: &str) -> Result<()> {
    let answer: DomainList = api()?
        .get_as(&format!("/api/v1/apps/{app}/domains"))
        .await?;
    print_list(app, &answer);
    Ok(())
}

/// `hangar domains remove APP HOST`.
pub async fn remove(app: &str, host: &str) -> Result<()> {
    let left: DomainList = api()?
        .delete_as(&format!("/api/v1/apps/{app}/domains/{host}"))
        .await?;
    println!("Removed {host} from {app}");
    print_list(app, &left);
    Ok(())
}

fn print_list(app: &str, list: &DomainList) {
    if list.domains.is_empty() {
        println!("{app} has no custom domains (`hangar domains add {app} HOST`)");
        return;
    }
    println!("{:<40} {:<8} {:<21} DNS", "HOST", "STATUS", "ADDED");
    for d in &list.domains {
        let dns: Vec<String> = d
            .dns
            .iter()
            .map(|r| format!("{} {}", r.kind, r.value))
            .collect();
        println!(
            "{:<40} {:<8} {:<21} {}",
            d.host,
            d.status,
            d.created_at,
            dns.join(", ")
        );
    }
}
