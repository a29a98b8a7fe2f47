// Progressive enhancement only: the form works without it (its Preview button asks the
// server). With it, the preview follows the topics as they are typed.
(function () {
  'use strict';
  var form = document.querySelector('form textarea#topics') &&
             document.querySelector('textarea#topics').form;
  var box = document.getElementById('preview');
  if (!form || !box || !window.fetch || !window.FormData) { return; }
  var timer = null;
  var seq = 0;
  function refresh() {
    var mine = ++seq;
    var body = new URLSearchParams(new FormData(form));
    fetch('/preview', {method: 'POST', body: body, credentials: 'same-origin',
                       headers: {'Content-Type': 'application/x-www-form-urlencoded'}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null && mine === seq) { box.innerHTML = html; } })
      .catch(function () {});
  }
  form.addEventListener('input', function (e) {
    if (e.target && e.target.name === 'email') { return; }
    clearTimeout(timer);
    timer = setTimeout(refresh, 350);
  });
})();
