//! `hangar domains …`: an app's custom domains, their certificates, and
//! HSTS.

use std::path::Path;

use anyhow::{Context, Result};
use hangar_api_types::hangar::{AddDomain, Certificate, Domain, DomainList, SetHsts};
use http::Method;

use crate::commands::api;

/// `hangar domains add APP HOST [--cert FILE --key FILE]`: prints the DNS
/// record to create and the certificate's state.
pub async fn add(app: &str, host: &str, cert: Option<&Path>, key: Option<&Path>) -> Result<()> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let body = AddDomain {
        host: host.to_owned(),
        certificate: cert.map(read).transpose()?,
        private_key: key.map(read).transpose()?,
    };
    let d: Domain = api()?
        .send_json_as(Method::POST, &format!("/api/v1/apps/{app}/domains"), &body)
        .await?;
    println!("Added {} to {} ({})", d.host, d.app, d.status);
    println!("Create this DNS record at your DNS provider:\n");
    for r in &d.dns {
        println!("    {:<6} {}  ->  {}", r.kind, r.name, r.value);
    }
    println!("\nCertificate: {}", describe(&d.certificate));
    if d.certificate.state == "pending" {
        println!("(`hangar domains list {app}` shows when it is issued)");
    }
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

/// `hangar domains renew APP HOST`: a new certificate now.
pub async fn renew(app: &str, host: &str) -> Result<()> {
    let cert: Certificate = api()?
        .send_json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/domains/{host}/renew"),
            &serde_json::json!({}),
        )
        .await?;
    println!("{host}: {}", describe(&cert));
    Ok(())
}

/// `hangar domains hsts APP on|off`.
pub async fn hsts(app: &str, on: bool) -> Result<()> {
    let list: DomainList = api()?
        .send_json_as(
            Method::PUT,
            &format!("/api/v1/apps/{app}/hsts"),
            &SetHsts { enabled: on },
        )
        .await?;
    println!(
        "HSTS is {} for {app}'s HTTPS answers",
        if list.hsts { "on" } else { "off" }
    );
    Ok(())
}

/// One line about a certificate.
fn describe(c: &Certificate) -> String {
    let mut s = match c.state.as_str() {
        "issued" => format!(
            "issued by {} ({}), valid until {}",
            c.issuer.as_deref().unwrap_or("?"),
            c.source.as_deref().unwrap_or("?"),
            c.not_after.as_deref().unwrap_or("?")
        ),
        "pending" => "being ordered".to_owned(),
        "failed" => format!(
            "failed: {}; next try {}",
            c.error.as_deref().unwrap_or("?"),
            c.next_try.as_deref().unwrap_or("?")
        ),
        "none" => "none (this server orders no certificates: hangar up --tls-listen … --acme-email …, or add the domain with --cert/--key)".to_owned(),
        other => other.to_owned(),
    };
    if c.state == "issued"
        && let Some(err) = &c.error
    {
        s.push_str(&format!(
            "; renewal failing: {err} (next try {})",
            c.next_try.as_deref().unwrap_or("?")
        ));
    }
    if c.renewal_alarm {
        s.push_str(" — RENEWAL FAILING AND IT ENDS WITHIN 14 DAYS");
    }
    s
}

fn print_list(app: &str, list: &DomainList) {
    println!(
        "{}: certificate {}",
        list.app_host,
        describe(&list.app_certificate)
    );
    println!("HSTS: {}", if list.hsts { "on" } else { "off" });
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
        println!("    certificate: {}", describe(&d.certificate));
    }
}
