/* billstream pages: the card form of the hosted invoice page and of the portal.
   Stripe.js collects the card (it never reaches billstream): a SetupIntent made by the
   ingress is confirmed with it (confirmCardSetup), and the PaymentMethod it gives is
   sent to the ingress, which publishes the command; then the page asks for the outcome. */
(function () {
  "use strict";
  var form = document.querySelector("form[data-card-form]");
  if (!form || typeof Stripe !== "function") return;
  var d = form.dataset;
  var button = form.querySelector("button[type=submit]");
  var message = form.querySelector(".message");
  var stripe = Stripe(d.publishableKey);
  var card = stripe.elements().create("card", { hidePostalCode: false });
  card.mount(form.querySelector(".card-field"));

  function say(text, kind) {
    message.textContent = text || "";
    message.className = "message" + (kind ? " " + kind : "");
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body),
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (b) {
        return { ok: r.ok, body: b };
      });
    });
  }

  function problem(b) {
    return (b && (b.message || b.detail || b.title)) || d.msgFailed;
  }

  function poll(url, done) {
    var deadline = Date.now() + 60000;
    function again() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (s) {
          if (done(s)) return;
          if (Date.now() > deadline) { finish(d.msgSlow, "error"); return; }
          setTimeout(again, 600);
        })
        .catch(function () { setTimeout(again, 1200); });
    }
    again();
  }

  function finish(text, kind) {
    say(text, kind);
    button.disabled = false;
    button.textContent = d.msgButton;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (button.disabled) return; // a second press while one is under way does nothing
    button.disabled = true;
    button.textContent = d.msgPaying;
    say("", "");
    post(d.setupUrl, {})
      .then(function (setup) {
        if (!setup.ok) throw problem(setup.body);
        return stripe.confirmCardSetup(setup.body.client_secret, { payment_method: { card: card } });
      })
      .then(function (result) {
        if (result.error) throw (result.error.message || d.msgFailed);
        var pm = result.setupIntent.payment_method;
        return post(d.submitUrl, { payment_method: typeof pm === "string" ? pm : pm.id });
      })
      .then(function (sent) {
        if (!sent.ok) throw problem(sent.body);
        var url = d.statusUrl + "?command=" + encodeURIComponent(sent.body.command_id) +
          "&after=" + encodeURIComponent(sent.body.attempts || 0);
        poll(url, function (s) {
          if (s.command && s.command.status === "failed") {
            finish(s.command.message || d.msgFailed, "error");
            return true;
          }
          if (d.kind === "pay") {
            if (s.invoice && s.invoice.paid) {
              say(d.msgPaid, "ok");
              button.hidden = true;
              var badge = document.querySelector("[data-state-badge]");
              if (badge) { badge.textContent = s.invoice.state_label; badge.className = "badge paid"; }
              var due = document.querySelector("[data-amount-due]");
              if (due) due.textContent = s.invoice.amount_due_text;
              var banner = document.querySelector("[data-paid-banner]");
              if (banner) banner.hidden = false;
              form.querySelector(".card-field").hidden = true;
              return true;
            }
            if (s.payment && s.payment.state === "failed") {
              finish(s.payment.failure_message || d.msgFailed, "error");
              return true;
            }
            return false;
          }
          if (s.command && s.command.status === "succeeded") {
            finish(d.msgSaved, "ok");
            return true;
          }
          return false;
        });
      })
      .catch(function (why) {
        finish(typeof why === "string" ? why : d.msgFailed, "error");
      });
  });
})();
